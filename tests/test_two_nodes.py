"""A real two-node Ray cluster on 127.0.0.1 that loses a node in the middle of a genrec job.

The head and one worker node are separate `ray start` processes (tests/ray_nodes.py) with one CPU
each, so a 2-worker Ray Train run has one worker on each node. The nodes share no genrec folder: the
data, the run's outputs and Ray Train's checkpoints live in an S3-compatible server on 127.0.0.1
(moto), and each node keeps its own mirrors (GENREC_CACHE). The job goes in through the job server,
as `ray job submit` sends it.

What Ray supports, and so what the test checks: when a node dies, Ray Train's controller sees its
worker die, tears the worker group down and asks for a new one of the same size (FailureConfig
max_failures). A group of two 1-CPU workers fits again once a node replaces the lost one (a
restarted machine, or an autoscaler's new node); the run then restarts from its last checkpoint
on S3. A smaller group (elastic training) would change the global batch and so the losses.

PPO's rollout workers are Ray actors with max_restarts: the ones on a lost node are restarted on a
node that has what they reserve (here the custom resource `rollout_node`, which only worker nodes
have), and the loop redoes their share of the iteration with the same weights and seeds.
"""
import json
import shlex
import sys
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from conftest import synth_and_prepare
from genrec.config import SFTConfig
from genrec.config_loader import from_dict
from genrec.faults import FAILED_ONCE, FAULTS_FILE
from genrec.train.launch import METRICS_FILE, train_sft
from ray_nodes import node_env, raylet, start_node, stop_node, wait_for, wait_for_job, wait_for_job_server

ROOT = Path(__file__).resolve().parents[1]
EXCLUDES = [".venv", "runs", "bench/work", ".git", ".whl", "**/__pycache__", "*.egg-info", ".pytest_cache"]
BUCKET = "genrec"
# The head's GCS checks each raylet every second and calls a node dead after 3 missed checks
# (Ray's defaults: 3 s and 5), so the controller hears of the loss within seconds. A spread threshold
# of 1 fills the driver's node (the head) before using another: PPO's learner, reference and scorer
# stay on the head, and only the rollout workers, which need `rollout_node`, go to the worker node.
HEAD_CONFIG = json.dumps({"health_check_period_ms": 1000, "health_check_failure_threshold": 3,
                          "health_check_timeout_ms": 1000, "scheduler_spread_threshold": 1.0})
WORKER_RESOURCES = {"rollout_node": 2}
SFT = dict(max_len=256, micro_batch_tokens=1024, tiny=dict(hidden=64, layers=2, heads=2, vocab_size=1024), lr=2e-3,
           warmup_steps=2, max_steps=8, log_every=1, eval_every=4, save_every=4, valid_rows=64,
           ray_train=dict(num_workers=2, cpus_per_worker=1, max_failures=2))


def overrides(settings: dict, prefix: str = "") -> list[str]:
    """`settings` as command-line overrides (tiny.hidden=64 ...)."""
    out = []
    for key, value in settings.items():
        out += overrides(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}={value}"]
    return out


@pytest.fixture(scope="module")
def s3(s3_server):
    return s3_server


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    caches = tmp_path_factory.mktemp("node_caches")
    nodes = []

    def add_worker_node(name: str) -> dict:
        nodes.append(start_node(1, head["gcs"], env=node_env(GENREC_CACHE=str(caches / name)),
                                resources=WORKER_RESOURCES))
        return nodes[-1]

    head = start_node(1, env=node_env(GENREC_CACHE=str(caches / "head")), system_config=HEAD_CONFIG)
    nodes.append(head)
    try:
        add_worker_node("worker")
        yield {"head": head, "address": head["address"], "client": wait_for_job_server(head["address"]),
               "add_worker_node": add_worker_node, "nodes": nodes}
    finally:
        for node in reversed(nodes):
            stop_node(node["temp_dir"])


def s3_filesystem(env: dict) -> pafs.S3FileSystem:
    return pafs.S3FileSystem(endpoint_override=env["AWS_ENDPOINT_URL"], access_key=env["AWS_ACCESS_KEY_ID"],
                             secret_key=env["AWS_SECRET_ACCESS_KEY"], region=env["AWS_DEFAULT_REGION"])


def s3_text(env: dict, key: str) -> str | None:
    fs = s3_filesystem(env)
    if fs.get_file_info(f"{BUCKET}/{key}").type == pafs.FileType.NotFound:
        return None
    with fs.open_input_stream(f"{BUCKET}/{key}") as f:
        return f.read().decode()


def s3_upload(env: dict, local: Path, key: str) -> None:
    pafs.copy_files(str(local), f"{BUCKET}/{key}", source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=s3_filesystem(env))


def train_losses(metrics_lines: str) -> tuple[dict, dict]:
    """(step -> training loss, step -> how many times it was logged) from a metrics.jsonl text."""
    losses, counts = {}, {}
    for line in metrics_lines.splitlines():
        m = json.loads(line)
        if "loss" in m:
            losses[m["step"]] = m["loss"]
            counts[m["step"]] = counts.get(m["step"], 0) + 1
    return losses, counts


def nodes_by_state(address: str) -> dict:
    from ray.util.state import list_nodes

    return {n.node_id: (n.state, n.is_head_node) for n in list_nodes(address=address)}


def live_worker_node(address: str) -> str:
    (node,) = [node for node, (state, head) in nodes_by_state(address).items() if state == "ALIVE" and not head]
    return node


def replace_the_worker_node(cluster: dict, worker_node: str, job_id: str, name: str) -> str:
    """Kill the worker node's raylet (the node dies with what runs on it), wait for the head to call it
    dead, start a node `name` in its place, and wait for the job to succeed; returns the job's log."""
    address, client = cluster["address"], cluster["client"]
    raylet(cluster["nodes"][-1]["temp_dir"]).kill()
    wait_for(lambda: nodes_by_state(address)[worker_node][0] == "DEAD", "the head to declare the node dead")
    cluster["add_worker_node"](name)
    status = wait_for_job(client, job_id)
    logs = client.get_job_logs(job_id)
    assert status == "SUCCEEDED", logs[-4000:]
    return logs


def train_worker_nodes(address: str) -> set:
    from ray.util.state import list_actors

    return {a.node_id for a in list_actors(address=address, filters=[("class_name", "=", "RayTrainWorker"),
                                                                      ("state", "=", "ALIVE")])}


def test_sft_on_two_nodes_resumes_from_its_s3_checkpoint_after_the_worker_node_dies(ray_session, cluster, s3,
                                                                                      tmp_path, monkeypatch):
    # The uninterrupted run: the same settings, two workers on the test session's one-node Ray.
    synth_and_prepare(tmp_path, num_users=200, num_items=300, history_len=10)
    train_sft(from_dict(SFTConfig, dict(SFT, data_dir=str(tmp_path / "prepared"), out_dir=str(tmp_path / "straight"))))
    expected, _ = train_losses((tmp_path / "straight" / METRICS_FILE).read_text())

    # The data goes to S3; every worker holds at step 6 (after the step-4 checkpoint), once.
    s3_upload(s3, tmp_path / "prepared", "prepared")
    (tmp_path / FAULTS_FILE).write_text(json.dumps({"hold_at_step": 6}))
    s3_upload(s3, tmp_path / FAULTS_FILE, f"sft/{FAULTS_FILE}")
    client, address = cluster["client"], cluster["address"]
    job_id = client.submit_job(
        entrypoint=" ".join([sys.executable, "ray_jobs/sft.py", f"data_dir=s3://{BUCKET}/prepared",
                             f"out_dir=s3://{BUCKET}/sft", *overrides(SFT)]),
        runtime_env={"working_dir": str(ROOT), "excludes": EXCLUDES, "env_vars": s3},
    )
    wait_for(lambda: s3_text(s3, f"sft/{FAILED_ONCE}") == "6", "the workers to hold at step 6", timeout_s=300)
    wait_for(lambda: "checkpoint_" in (s3_text(s3, "sft/ray/sft/checkpoint_manager_snapshot.json") or ""),
             "Ray Train to record the step-4 checkpoint on S3")
    worker_node = live_worker_node(address)
    assert len(train_worker_nodes(address)) == 2, "the two Ray Train workers are not on two nodes"

    logs = replace_the_worker_node(cluster, worker_node, job_id, "replacement")  # with its Ray Train worker
    resumed = [line for line in logs.splitlines() if "resuming from" in line]
    print(f"killed node {worker_node}; {resumed}")
    assert resumed and all(line.rstrip().endswith("at step 4") for line in resumed), logs[-4000:]
    assert worker_node not in resumed[0]  # rank 0 resumed on a live node
    assert f"{BUCKET}/sft/ray/sft/checkpoint_" in resumed[0]  # the fs path of the S3 checkpoint

    # The run finished on S3 with the uninterrupted run's losses: steps 1-4 once, step 5 before the
    # node died and again after the restart from step 4, then 6-8.
    assert json.loads(s3_text(s3, "sft/final/genrec.json"))["metrics"]["step"] == 8
    got, counts = train_losses(s3_text(s3, f"sft/{METRICS_FILE}"))
    assert counts == {1: 1, 2: 1, 3: 1, 4: 1, 5: 2, 6: 1, 7: 1, 8: 1}
    for step in range(1, 9):
        assert got[step] == pytest.approx(expected[step], abs=1e-4), (step, got[step], expected[step])
    after = nodes_by_state(address)
    assert after[worker_node][0] == "DEAD" and sum(state == "ALIVE" for state, _ in after.values()) == 2

    # `genrec evaluate` ranks with the best model straight from S3 and writes its report there.
    job_id = client.submit_job(
        entrypoint=" ".join([sys.executable, "ray_jobs/evaluate.py", f"data_dir=s3://{BUCKET}/prepared",
                             f"checkpoint_dir=s3://{BUCKET}/sft/best", f"out_dir=s3://{BUCKET}/eval",
                             "max_users=16", "batch_size=8", "num_beams=5", "top_k=5", "ks=[5]"]),
        runtime_env={"working_dir": str(ROOT), "excludes": EXCLUDES, "env_vars": s3},
    )
    assert wait_for_job(client, job_id) == "SUCCEEDED", client.get_job_logs(job_id)[-4000:]
    report = json.loads(s3_text(s3, "eval/report.json"))
    assert report["users"] == 16 and report["hallucination_rate"] == 0.0 and "hr@5" in report["metrics"]
    assert report["model"] == f"s3://{BUCKET}/sft/best" and s3_text(s3, "eval/report.md").startswith("# Evaluation")

    # Serve's recommender model loads the same checkpoint and catalog from S3 (into this process's mirrors).
    from genrec.config import RecommenderServeConfig
    from genrec.serve.recommender import RecommenderModel

    for key, value in {**s3, "GENREC_CACHE": str(tmp_path / "serve_cache")}.items():
        monkeypatch.setenv(key, value)
    model = RecommenderModel(RecommenderServeConfig(checkpoint_dir=f"s3://{BUCKET}/sft/best",
                                                    data_dir=f"s3://{BUCKET}/prepared", num_beams=5))
    history = model.item_ids[:3]
    (answer,) = model.rank([model.check(history, 5, True)])
    assert len(answer["items"]) == 5 and not {item["item_id"] for item in answer["items"]} & set(history)
    assert model.info()["checkpoint"] == f"s3://{BUCKET}/sft/best"


PPO = dict(prompt_format="raw", reward="count", reward_word="yes", iterations=6, rollout_batch_size=32,
           max_new_tokens=8, num_rollout_workers=2, ppo_epochs=2, minibatch_size=16, lr=3e-3, value_lr=1e-2,
           kl_controller="fixed", init_kl_coef=0.5, save_every=2, worker_cpus=0.25, learner_cpus=0.25,
           torch_threads=1, seed=7, compile_cpu=False)


def actor_nodes(address: str, class_name: str) -> set:
    from ray.util.state import list_actors

    return {a.node_id for a in list_actors(address=address, filters=[("class_name", "=", class_name),
                                                                      ("state", "=", "ALIVE")])}


def test_ppo_on_two_nodes_redoes_the_share_of_the_rollout_workers_whose_node_died(ray_session, cluster, s3, tmp_path):
    from genrec.config import PPOConfig
    from genrec.rl.loop import read_metrics, run_ppo
    from genrec.rl.toy import make_toy_task

    # The uninterrupted run on the test session's one-node Ray.
    task = make_toy_task(tmp_path / "task")
    run_ppo(PPOConfig(**task, **PPO, out_dir=str(tmp_path / "straight")))
    expected = read_metrics(tmp_path / "straight")

    # The task goes to S3; rollout worker 0 holds in iteration 4 (index 3), once.
    s3_upload(s3, tmp_path / "task", "ppo_task")
    (tmp_path / FAULTS_FILE).write_text(json.dumps({"hold_at_iteration": 3}))
    s3_upload(s3, tmp_path / FAULTS_FILE, f"ppo/{FAULTS_FILE}")
    client, address = cluster["client"], cluster["address"]
    args = overrides(dict(PPO, rollout_resources="{rollout_node: 1}", policy_dir=f"s3://{BUCKET}/ppo_task/policy",
                          prompts_path=f"s3://{BUCKET}/ppo_task/prompts.parquet", out_dir=f"s3://{BUCKET}/ppo"))
    job_id = client.submit_job(entrypoint=" ".join([sys.executable, "ray_jobs/ppo.py", *map(shlex.quote, args)]),
                               runtime_env={"working_dir": str(ROOT), "excludes": EXCLUDES, "env_vars": s3})
    wait_for(lambda: s3_text(s3, f"ppo/{FAILED_ONCE}") == "3", "rollout worker 0 to hold in iteration 4", timeout_s=300)
    worker_node = live_worker_node(address)
    assert actor_nodes(address, "RolloutWorker") == {worker_node}
    assert worker_node not in actor_nodes(address, "Learner") | actor_nodes(address, "RewardScorer")

    logs = replace_the_worker_node(cluster, worker_node, job_id, "ppo_replacement")  # with both rollout workers
    died = [line for line in logs.splitlines() if "died in iteration 4" in line or "restarting at the weight sync" in line]
    print(f"killed node {worker_node}; {died}")
    # Worker 0 died holding its share. Worker 1 had returned its share before: it restarts too, and the
    # next weight sync either finds it back or waits for it (counted then).
    assert any("rollout worker 0 died in iteration 4" in line for line in died), logs[-4000:]

    # Every iteration as in the uninterrupted run; the restarts are counted from iteration 4 on.
    rows = [json.loads(line) for line in s3_text(s3, "ppo/metrics.jsonl").splitlines()]
    assert [r["iteration"] for r in rows] == list(range(1, 7))
    for mine, theirs in zip(rows, expected):
        assert mine["reward_mean"] == pytest.approx(theirs["reward_mean"], abs=1e-6)
        assert mine["kl"] == pytest.approx(theirs["kl"], abs=1e-4)
    restarts = [r["restarts"] for r in rows]
    assert restarts[:3] == [0, 0, 0] and restarts[3] >= 1 and restarts[-1] == len(died) and restarts == sorted(restarts)
    assert s3_text(s3, "ppo/final/genrec.json") is not None
    assert actor_nodes(address, "RolloutWorker") == set()  # the job's actors are gone with it
