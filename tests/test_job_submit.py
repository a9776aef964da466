"""`ray job submit` and JobSubmissionClient against a separate local Ray head on 127.0.0.1
(tests/ray_nodes.py: its own ports and temp dir, nothing shared with the test session's Ray)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from genrec.report import read_jsonl, sft_loss, write_report
from ray_nodes import JOB_TIMEOUT_S as TIMEOUT_S
from ray_nodes import RAY, node_env, start_node, stop_node, wait_for_job, wait_for_job_server

ROOT = Path(__file__).resolve().parents[1]
# What a working-dir upload must leave behind (also documented in the README's runtime_env).
EXCLUDES = [".venv", "runs", "bench/work", ".git", ".whl", "**/__pycache__", "*.egg-info", ".pytest_cache"]


@pytest.fixture(scope="module")
def head():
    """A Ray head on 127.0.0.1 with a dashboard (the job server); yields its http address."""
    node = start_node(num_cpus=2)
    try:
        yield {"address": node["address"], "client": wait_for_job_server(node["address"]), "env": node_env(),
               "temp_dir": node["temp_dir"]}
    finally:
        stop_node(node["temp_dir"])


def test_prepare_with_the_cli_then_sft_with_the_client_on_a_separate_head(head, tmp_path):
    from ray.job_submission import JobStatus

    run = tmp_path / "run"
    for ignored in ("runs", "bench/work"):  # git-ignored, so absent from a fresh clone: the upload must skip them
        (ROOT / ignored).mkdir(parents=True, exist_ok=True)
    # 1. `ray job submit` (waits and streams the log): the pipeline's synth, prepare and popularity
    #    baseline stages, with the pipeline's report.
    cli = subprocess.run(
        [RAY, "job", "submit", "--address", head["address"], "--submission-id", "genrec-prepare",
         "--working-dir", str(ROOT), "--runtime-env-json", json.dumps({"excludes": EXCLUDES}), "--",
         sys.executable, "ray_jobs/pipeline.py",
         "--config", "configs/pipeline_demo.yaml", "only=[synth,prepare,evaluate_pop]", f"out_dir={run}",
         "synth.num_users=60", "synth.num_items=90", "prepare.history_len=5"],
        env=head["env"], capture_output=True, text=True, timeout=TIMEOUT_S, cwd=tmp_path,
    )
    assert cli.returncode == 0, cli.stdout[-3000:] + cli.stderr[-3000:]
    assert "pipeline: done ['synth', 'prepare', 'evaluate_pop']" in cli.stdout
    client = head["client"]
    assert client.get_job_status("genrec-prepare") == JobStatus.SUCCEEDED
    stats = json.loads((run / "prepared" / "stats.json").read_text())
    assert stats["users"] == 60 and (run / "prepared" / "train").is_dir()
    assert json.loads((run / "pipeline.json").read_text())["stages"]["prepare"]["result"]["users"] == 60
    pop = json.loads((run / "eval" / "pop" / "report.json").read_text())["metrics"]
    report = (run / "report.md").read_text()
    assert f"| pop | 60 | {pop['hr@1']:.4f} | {pop['hr@5']:.4f} | {pop['hr@10']:.4f} |" in report
    assert (run / "plots" / "next_item_ranking_full_catalog.png").stat().st_size > 1000
    # The upload left the excluded folders behind: the head's copy of the checkout has no runs/ or .venv.
    (copy,) = Path(head["temp_dir"]).glob("session_latest/runtime_resources/working_dir_files/*/")
    assert (copy / "ray_jobs" / "pipeline.py").exists() and (copy / "genrec").is_dir()
    for left_behind in (".venv", "runs", "bench/work", ".git"):
        assert (ROOT / left_behind).exists() and not (copy / left_behind).exists(), left_behind

    # 2. JobSubmissionClient: SFT on what the first job prepared.
    job_id = client.submit_job(
        entrypoint=f"{sys.executable} ray_jobs/sft.py data_dir={run / 'prepared'} out_dir={run / 'sft'} "
                   "tiny.vocab_size=512 tiny.hidden=32 tiny.layers=1 tiny.heads=2 max_len=128 micro_batch_tokens=512 "
                   "max_steps=4 eval_every=2 save_every=2 log_every=2 valid_rows=16 ray_train.num_workers=1",
        runtime_env={"working_dir": str(ROOT), "excludes": EXCLUDES},
    )
    status = wait_for_job(client, job_id)
    logs = client.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    final = json.loads((run / "sft" / "final" / "genrec.json").read_text())
    assert final["stage"] == "sft" and final["metrics"]["step"] == 4
    assert "valid_loss" in logs

    # The report's loss table on the job's real log: first and last validation losses as logged.
    report = write_report(tmp_path / "report", [sft_loss("SFT", run / "sft")]).read_text()
    records, bad = read_jsonl(run / "sft" / "metrics.jsonl")
    valid = {r["step"]: r["valid_loss"] for r in records if "valid_loss" in r}
    assert bad == 0 and sorted(valid) == [0, 2, 4]
    assert f"| validation loss | {valid[0]:.4f} (0) | {valid[4]:.4f} (4) |" in report


# ------------------------------------------------------------- ray_jobs/pipeline.py's plan, no Ray
def load_pipeline_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("genrec_pipeline", ROOT / "ray_jobs" / "pipeline.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def test_pipeline_plan_fills_the_run_dir_applies_stage_overrides_and_skips_missing_verbs(tmp_path):
    from genrec.config_loader import ConfigError

    pipeline = load_pipeline_module()
    (tmp_path / "p.yaml").write_text(json.dumps({"out_dir": str(tmp_path / "run"), "stages": [
        {"name": "synth", "verb": "data synth interactions", "config": {"out_dir": "{run}/synth"}},
        {"name": "sft", "verb": "train-sft", "config": {"data_dir": "{run}/prepared", "out_dir": "{run}/sft"}},
        {"name": "future", "verb": "no-such-verb", "config": {}},
        {"name": "after", "verb": "evaluate", "needs": ["future"], "config": {}},
    ]}))
    cfg = pipeline.load_pipeline(str(tmp_path / "p.yaml"), ["sft.max_steps=7", "sft.run_name=007"])
    steps = {s["name"]: s for s in pipeline.plan(cfg)}
    assert steps["synth"]["config"].out_dir == str(tmp_path / "run" / "synth")
    sft = steps["sft"]["config"]
    assert sft.data_dir == str(tmp_path / "run" / "prepared") and sft.max_steps == 7 and sft.run_name == "007"
    assert "no-such-verb" in steps["future"]["skip"] and "needs ['future']" in steps["after"]["skip"]
    only = pipeline.plan(pipeline.load_pipeline(str(tmp_path / "p.yaml"), ["only=[sft]"]))
    assert [s["name"] for s in only] == ["sft"]

    with pytest.raises(ConfigError, match="stage sft .*max_stepz"):
        pipeline.plan(pipeline.load_pipeline(str(tmp_path / "p.yaml"), ["sft.max_stepz=7"]))
    with pytest.raises(ConfigError, match="no-such-verb"):
        pipeline.plan(pipeline.load_pipeline(str(tmp_path / "p.yaml"), ["skip_missing=false"]))
    with pytest.raises(ConfigError, match="only: no stage named 'prepare'"):
        pipeline.load_pipeline(str(tmp_path / "p.yaml"), ["only=[prepare]"])


def test_demo_pipeline_config_builds_every_stage_this_genrec_has():
    pipeline = load_pipeline_module()
    steps = pipeline.plan(pipeline.load_pipeline(str(ROOT / "configs" / "pipeline_demo.yaml"), []))
    built = [s["name"] for s in steps if "config" in s]
    assert built[:5] == ["synth", "prepare", "sft", "evaluate", "evaluate_pop"]
