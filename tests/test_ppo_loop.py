"""The PPO loop on local Ray with the toy task (reward = count of one word; genrec/rl/toy.py):
learning, a rollout worker killed mid-run, and resume equal to an uninterrupted run."""
import json
from pathlib import Path

import pytest
import ray
import torch

from genrec.config import PPOConfig
from genrec.faults import FAILED_ONCE, plan_crash
from genrec.rl.policy import STATE_FILE
from genrec.rl.toy import make_toy_task

ITERATIONS = 12
MAX_NEW_TOKENS = 8  # the reward's optimum is 8 target words and no EOS
# With the KL penalty the optimum per token is pi(w) ∝ ref(w)·exp(reward(w)/beta). The random policy
# is near uniform over the 12 tokens, so at beta 0.5: pi(yes) ≈ 0.40, reward ≈ 3.2 and KL ≈ 3.0 nats
# per response, where the unpenalised optimum has KL = 8·ln 12 ≈ 19.9.
BETA = 0.5


def _config(task: dict, out_dir: Path, **overrides) -> PPOConfig:
    args = dict(task, out_dir=str(out_dir), prompt_format="raw", reward="count", reward_word="yes",
                iterations=ITERATIONS, rollout_batch_size=32, max_new_tokens=MAX_NEW_TOKENS, num_rollout_workers=2,
                ppo_epochs=2, minibatch_size=16, lr=3e-3, value_lr=1e-2, kl_controller="fixed",
                init_kl_coef=BETA, save_every=4, worker_cpus=0.25, learner_cpus=0.25,
                torch_threads=1, seed=7,
                # The loop, not the sampler, is under test here: compiling the CPU decode step costs each
                # worker more seconds than these 8-token rollouts save (compiled == eager: test_ppo_math;
                # the compiled step inside the loop: test_girl_market).
                compile_cpu=False)
    args.update(overrides)
    return PPOConfig(**args)


def _metrics(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def toy(tmp_path_factory, ray_session):
    from genrec.rl.loop import run_ppo

    root = tmp_path_factory.mktemp("ppo_toy")
    task = make_toy_task(root / "task")
    uninterrupted = root / "uninterrupted"
    result = run_ppo(_config(task, uninterrupted))
    return {"task": task, "root": root, "out": uninterrupted, "result": result}


def test_reward_rises_on_the_toy_task_while_kl_stays_bounded_on_cpu(toy):
    rows = _metrics(toy["out"])
    assert [r["iteration"] for r in rows] == list(range(1, ITERATIONS + 1))
    first, last = rows[0]["reward_mean"], sum(r["reward_mean"] for r in rows[-3:]) / 3
    assert first < 1.5  # a random policy says the word about once in 12 tokens
    assert last > first + 2.0, [r["reward_mean"] for r in rows]
    # KL stays near the penalised optimum (≈ 3), far below the unpenalised one (≈ 19.9)
    assert max(r["kl"] for r in rows) < 8.0, [r["kl"] for r in rows]
    # sampled log-probs are the learner's for the same weights (the generator and the model agree)
    assert all(r["rollout_logp_gap"] < 1e-4 for r in rows)
    for key in ("timing/generate", "timing/score", "timing/ref", "timing/update", "timing/sync", "tokens_per_s",
                "entropy", "clip_fraction", "loss/value", "approx_kl", "eos_rate", "response_length", "reward_std"):
        assert key in rows[-1]
    final = toy["out"] / "final"
    assert (final / STATE_FILE).exists() and (final / "genrec.json").exists()
    assert len(list((toy["out"] / "checkpoints").iterdir())) == 2  # keep_checkpoints


def test_killed_rollout_worker_and_resumed_run_equal_the_uninterrupted_run_on_cpu(toy):
    from genrec.rl.loop import run_ppo

    out = toy["root"] / "interrupted"
    # first half: rollout worker 0 dies in iteration 3; Ray restarts it and the iteration is redone
    plan_crash(out, crash_at_iteration=3)
    first = run_ppo(_config(toy["task"], out, iterations=ITERATIONS // 2))
    assert first["restarts"] >= 1 and (out / FAILED_ONCE).read_text() == "3"
    # rerun to the end: resumes from the checkpoint at iteration 6
    second = run_ppo(_config(toy["task"], out))
    assert second["restarts"] == first["restarts"]  # carried over, and no new failure

    rows, reference = _metrics(out), _metrics(toy["out"])
    assert [r["iteration"] for r in rows] == list(range(1, ITERATIONS + 1))
    for mine, theirs in zip(rows, reference):
        assert mine["reward_mean"] == pytest.approx(theirs["reward_mean"], abs=1e-6)
        assert mine["kl"] == pytest.approx(theirs["kl"], abs=1e-4)
    resumed = torch.load(out / "final" / STATE_FILE, weights_only=False)
    straight = torch.load(toy["out"] / "final" / STATE_FILE, weights_only=False)
    assert resumed["iteration"] == straight["iteration"] == ITERATIONS
    for name, tensor in straight["policy"].items():
        assert torch.allclose(resumed["policy"][name], tensor, atol=1e-5), name
    assert resumed["kl_ctl"]["beta"] == pytest.approx(straight["kl_ctl"]["beta"], rel=1e-6)


def test_one_step_off_policy_samples_with_the_weights_before_the_last_update_and_still_learns(toy):
    from genrec.rl.loop import run_ppo

    out = toy["root"] / "off_policy"
    run_ppo(_config(toy["task"], out, off_policy=True))
    rows = _metrics(out)
    assert [r["iteration"] for r in rows] == list(range(1, ITERATIONS + 1))
    # The first batch is sampled by the weights the learner holds; every later one by the weights one
    # update older, so the sampler's log-probs differ from the learner's (they agree to 1e-4 on-policy).
    assert rows[0]["rollout_logp_gap"] < 1e-4
    assert all(r["rollout_logp_gap"] > 1e-3 for r in rows[1:]), [r["rollout_logp_gap"] for r in rows]
    assert all(0.5 < r["is_weight_mean"] < 1.5 for r in rows), [r["is_weight_mean"] for r in rows]
    first, last = rows[0]["reward_mean"], sum(r["reward_mean"] for r in rows[-3:]) / 3
    assert last > first + 2.0, [r["reward_mean"] for r in rows]
    assert max(r["kl"] for r in rows) < 8.0, [r["kl"] for r in rows]


@pytest.mark.parametrize("advantage", ["grpo", "rloo"])
def test_critic_free_advantages_learn_the_toy_task_from_groups_of_responses(toy, advantage):
    from genrec.rl.loop import run_ppo

    out = toy["root"] / advantage
    run_ppo(_config(toy["task"], out, advantage=advantage, rollout_batch_size=8, samples_per_prompt=4))
    rows = _metrics(out)
    assert all(r["responses"] == 32 for r in rows)
    first, last = rows[0]["reward_mean"], sum(r["reward_mean"] for r in rows[-3:]) / 3
    assert last > first + 2.0, [r["reward_mean"] for r in rows]
    assert max(r["kl"] for r in rows) < 8.0, [r["kl"] for r in rows]
    assert all(r["loss/value"] == 0.0 for r in rows)  # no critic is trained: its bias keeps its initial 0
    state = torch.load(out / "final" / STATE_FILE, weights_only=False)
    assert torch.equal(state["value_head"]["bias"], torch.zeros(1))


def test_two_learners_in_a_process_group_take_the_steps_of_one(toy):
    """Each learner updates on its half of every minibatch and the gradients are summed (gloo): the
    run must equal the one-learner run, and both learners must end with the same weights."""
    from genrec.rl.loop import PPORun

    run = PPORun(_config(toy["task"], toy["root"] / "two_learners", num_learners=2, iterations=6))
    try:
        run.setup()
        run.train()
        first, second = ray.get([learner.trainable_state.remote() for learner in run.learners])
    finally:
        run.cleanup()
    for name, tensor in first.items():
        assert torch.equal(tensor, second[name]), name
    rows, reference = _metrics(toy["root"] / "two_learners"), _metrics(toy["out"])[:6]
    for mine, theirs in zip(rows, reference, strict=True):
        assert mine["reward_mean"] == pytest.approx(theirs["reward_mean"], abs=1e-6)
        for key in ("kl", "loss/policy", "loss/value", "grad_norm"):
            assert mine[key] == pytest.approx(theirs[key], rel=1e-3, abs=1e-5), key
    assert torch.load(toy["root"] / "two_learners" / "final" / STATE_FILE, weights_only=False)["iteration"] == 6


def test_prompt_set_joins_the_hidden_truth_by_cv_id_and_names_bad_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from genrec.rl.loop import PromptSet
    from genrec.rl.toy import word_tokenizer

    pq.write_table(pa.table({"cv_id": ["a", "b"], "text": ["red cat", "blue dog"]}), tmp_path / "cvs.parquet")
    pq.write_table(pa.table({"cv_id": ["b", "a"], "text": ["x", "y"], "true_role": ["nurse", "teacher"],
                             "true_seniority": ["mid", "lead"], "true_skills": [["triage"], ["phonics"]],
                             "true_location": ["Paris", "Berlin"]}), tmp_path / "truth.parquet")
    base = dict(policy_dir="unused", prompts_path=str(tmp_path / "cvs.parquet"), prompt_format="raw")
    prompts = PromptSet(PPOConfig(**base, truth_path=str(tmp_path / "truth.parquet")), word_tokenizer())
    assert prompts.truth["red cat"]["true_role"] == "teacher" and prompts.truth["blue dog"]["true_role"] == "nurse"
    assert prompts.ids[0] == [1, 6, 8]  # <bos> red cat
    assert PromptSet(PPOConfig(**base), word_tokenizer()).truth is None
    # every iteration's rows come from a fixed per-epoch order: the same call gives the same rows
    assert prompts.batch(3, 2) == prompts.batch(3, 2) and sorted(prompts.batch(0, 2)) == [0, 1]

    pq.write_table(pa.table({"cv_id": ["b"], "true_role": ["nurse"], "true_seniority": ["mid"],
                             "true_skills": [["triage"]], "true_location": ["Paris"]}), tmp_path / "partial.parquet")
    with pytest.raises(ValueError, match="row 0: cv_id 'a'"):
        PromptSet(PPOConfig(**base, truth_path=str(tmp_path / "partial.parquet")), word_tokenizer())
    with pytest.raises(ValueError, match="row 0: the prompt has 3 tokens"):
        PromptSet(PPOConfig(**base, max_prompt_tokens=2), word_tokenizer())


def test_with_use_gpu_the_reference_and_the_scorer_share_a_gpu_and_a_tune_trial_reserves_it():
    from genrec.rl.actors import resources
    from genrec.tune import ppo_bundles, ppo_resources

    cpu = resources(PPOConfig(num_rollout_workers=2))
    assert {role: need["num_gpus"] for role, need in cpu.items()} == dict.fromkeys(cpu, 0)
    gpu = resources(PPOConfig(use_gpu=True, num_rollout_workers=2, worker_cpus=0.5))
    assert gpu["learner"]["num_gpus"] == gpu["rollout"]["num_gpus"] == 1
    assert gpu["reference"]["num_gpus"] == gpu["scorer"]["num_gpus"] == 0.5 and gpu["scorer"]["num_cpus"] == 0.5
    on_cpus = resources(PPOConfig(use_gpu=True, support_gpus=0))
    assert on_cpus["reference"]["num_gpus"] == on_cpus["scorer"]["num_gpus"] == 0 and on_cpus["learner"]["num_gpus"] == 1
    # learner + reference + scorer + 2 rollout workers: 1 + 0.5 + 0.5 + 2 GPUs, one bundle each
    cfg = PPOConfig(use_gpu=True, num_rollout_workers=2)
    assert [b.get("GPU", 0) for b in ppo_bundles(cfg)] == [1, 0.5, 0.5, 1, 1]
    assert ppo_resources(cfg)["GPU"] == 4
    # rollout_resources: a custom resource on each rollout worker (and its bundle) alone
    pinned = PPOConfig(num_rollout_workers=2, rollout_resources={"rollout_node": 1})
    assert resources(pinned)["rollout"]["resources"] == {"rollout_node": 1} and "resources" not in resources(pinned)["learner"]
    assert [b.get("rollout_node", 0) for b in ppo_bundles(pinned)] == [0, 0, 0, 1, 1]


def test_lora_policy_syncs_only_its_adapter_and_the_worker_then_samples_what_the_learner_would(tmp_path):
    from genrec.config import Lora
    from genrec.rl.policy import is_adapter, load_policy, load_sync_weights, sync_weights

    task = make_toy_task(tmp_path / "task")
    cfg = PPOConfig(**task, out_dir=str(tmp_path / "out"), lora=Lora(enabled=True, r=4, alpha=8))
    learner, _ = load_policy(cfg, trainable=True, device=torch.device("cpu"))
    worker, _ = load_policy(cfg, trainable=False, device=torch.device("cpu"))
    assert is_adapter(learner) and is_adapter(worker)
    learner.eval(), worker.eval()  # no LoRA dropout in the comparison
    with torch.no_grad():  # a training step's worth of change, on the adapter only
        for name, param in learner.named_parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.5)
    weights = sync_weights(learner)
    assert weights and all("lora_" in name for name in weights)
    assert sum(t.numel() for t in weights.values()) < 0.2 * sum(t.numel() for t in learner.state_dict().values())
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    before = worker(input_ids=ids).logits
    assert not torch.allclose(before, learner(input_ids=ids).logits, atol=1e-4)
    load_sync_weights(worker, weights)
    assert torch.allclose(worker(input_ids=ids).logits, learner(input_ids=ids).logits, atol=1e-5)
    with pytest.raises(KeyError, match="adapter tensors"):
        load_sync_weights(worker, {"base_model.model.lora_nowhere.weight": torch.zeros(1)})
