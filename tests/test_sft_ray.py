"""`genrec train-sft` on real Ray Train workers (gloo, CPU): learning, scaling, restarts, resume."""
import json
import shutil

import pytest
import torch

from conftest import synth_and_prepare
from genrec.config import SFTConfig
from genrec.config_loader import from_dict
from genrec.faults import FAILED_ONCE, plan_crash
from genrec.models.loading import load_checkpoint
from genrec.train.launch import METRICS_FILE, train_sft


@pytest.fixture(scope="module")
def prepared(ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    synth_and_prepare(root, num_users=200, num_items=300, history_len=10)
    return root


def run(prepared, name, crash_at_step=0, **overrides):
    """One SFT run in its own out_dir; the tokenizer and token shards are copied from the first run.
    `ray_train` overrides go into that section; crash_at_step plans a worker crash (genrec/faults.py)."""
    out = prepared / name
    if crash_at_step:
        plan_crash(out, crash_at_step=crash_at_step)
    first = prepared / "_tokens"
    if first.exists():
        for part in ("tokenizer", "tokens"):
            shutil.copytree(first / part, out / part)
    settings = dict(data_dir=str(prepared / "prepared"), out_dir=str(out), max_len=256, micro_batch_tokens=1024,
                    tiny=dict(hidden=64, layers=2, heads=2, vocab_size=1024), lr=2e-3, warmup_steps=2,
                    max_steps=8, log_every=1, eval_every=4, save_every=4, valid_rows=64)
    settings.update(overrides)
    final = train_sft(from_dict(SFTConfig, settings))
    if not first.exists():
        for part in ("tokenizer", "tokens"):
            shutil.copytree(out / part, first / part)
    return final, out


def losses(out):
    """step -> training loss, from the plain metrics log (the last report of a step wins)."""
    by_step = {}
    for line in (out / METRICS_FILE).read_text().splitlines():
        m = json.loads(line)
        if "loss" in m:
            by_step[m["step"]] = m["loss"]
    return by_step


def torch_threads(out) -> set:
    """The torch thread counts the training-loss lines of a run report."""
    rows = [json.loads(line) for line in (out / METRICS_FILE).read_text().splitlines()]
    return {m["torch_threads"] for m in rows if "loss" in m}


def test_validation_loss_falls_and_models_are_saved_on_cpu(prepared):
    final, out = run(prepared, "learn", max_steps=30, eval_every=10, save_every=10, ray_train=dict(cpus_per_worker=2))
    reports = [json.loads(line) for line in (out / METRICS_FILE).read_text().splitlines()]
    # The worker reserved both CPUs and trained on two threads (Ray's default gives a worker one).
    assert torch_threads(out) == {2}
    # one value per step: a worker restarted under load repeats steps (with the same values)
    by_step = {m["step"]: m["valid_loss"] for m in reports if "valid_loss" in m}
    assert reports[0]["step"] == 0 and sorted(by_step) == [0, 10, 20, 30]
    valid = [by_step[step] for step in sorted(by_step)]
    assert valid[-1] < valid[0] - 1.0, valid  # from ~ln(vocab) down clearly
    assert final["step"] == 30
    best = json.loads((out / "best" / "genrec.json").read_text())
    assert best["stage"] == "sft" and best["metrics"]["valid_loss"] == min(valid[1:])
    assert (out / "final" / "model.safetensors").exists() and (out / "config.yaml").exists()
    # Rerunning a finished run resumes at its last step: nothing trains, final/ stands.
    again = train_sft(from_dict(SFTConfig, json_config(out)))
    assert again["step"] == 30 and again["loss"] == final["loss"]


def test_two_workers_match_one_worker_with_the_same_global_batch_on_cpu(prepared):
    _, one = run(prepared, "one_worker", ray_train=dict(num_workers=1), grad_accum=2)
    _, ddp = run(prepared, "two_workers_ddp", ray_train=dict(num_workers=2), grad_accum=1, strategy="ddp")
    _, fsdp = run(prepared, "two_workers_fsdp", ray_train=dict(num_workers=2), grad_accum=1, strategy="fsdp")
    a = losses(one)
    assert sorted(a) == list(range(1, 9))
    assert torch_threads(one) == {1}  # Ray's default: one CPU, so one thread, per worker
    for other in (losses(ddp), losses(fsdp)):
        assert sorted(other) == sorted(a)
        for step in a:
            assert other[step] == pytest.approx(a[step], abs=2e-4), (step, a[step], other[step])
    # FSDP's sharded weights are gathered for the export: both final models give the same logits.
    ids = torch.arange(3, 40).unsqueeze(0)
    logits = [load_checkpoint(out / "final", device="cpu")[0](ids).logits for out in (ddp, fsdp)]
    assert torch.allclose(logits[0], logits[1], atol=1e-4)


def test_killed_worker_restarts_and_rerun_resumes_to_the_same_losses_on_cpu(prepared):
    _, straight = run(prepared, "straight")
    expected = losses(straight)

    # A worker dies at step 6; Ray Train restarts it from the step-4 checkpoint and the run ends at 8.
    final, restarted = run(prepared, "restarted", crash_at_step=6, ray_train=dict(max_failures=1))
    assert (restarted / FAILED_ONCE).read_text() == "6" and final["step"] == 8
    # Steps 1-4 ran once; 5 ran before the crash and again after the restart from step 4.
    assert report_counts(restarted) == {1: 1, 2: 1, 3: 1, 4: 1, 5: 2, 6: 1, 7: 1, 8: 1}
    got = losses(restarted)
    for step in (5, 6, 7, 8):
        assert got[step] == pytest.approx(expected[step], abs=1e-4)

    # With no retries the run fails; rerunning the same out_dir resumes from its last checkpoint.
    with pytest.raises(Exception):
        run(prepared, "rerun", crash_at_step=6, ray_train=dict(max_failures=0))
    out = prepared / "rerun"
    final = train_sft(from_dict(SFTConfig, json_config(out)))
    assert final["step"] == 8 and report_counts(out)[5] == 2 and report_counts(out)[1] == 1
    assert losses(out)[8] == pytest.approx(expected[8], abs=1e-4)


def report_counts(out):
    """step -> how many times a training loss was logged for it (repeats mean the step ran again)."""
    counts = {}
    for line in (out / METRICS_FILE).read_text().splitlines():
        m = json.loads(line)
        if "loss" in m:
            counts[m["step"]] = counts.get(m["step"], 0) + 1
    return counts


def json_config(out):
    import yaml

    return yaml.safe_load((out / "config.yaml").read_text())


def test_trainer_trl_trains_the_same_model_on_the_same_rows_as_genrec_and_evaluate_ranks_with_it(prepared):
    """TRL's SFTTrainer in the Ray Train worker: the same model build, rows and validation rows, so the
    step-0 validation loss is genrec's; after 8 steps of lr 2e-3 both have learned about as much
    (the batches are formed apart: within 2%), and genrec evaluate loads TRL's output."""
    from genrec.config import EvaluateConfig
    from genrec.rec.evaluate import evaluate

    settings = dict(batching="padded", micro_batch_tokens=1024, valid_rows=32, save_every=4, eval_every=8)
    _, ours = run(prepared, "genrec_padded", **settings)
    final, theirs = run(prepared, "trl", trainer="trl", **settings)
    valid = {name: {m["step"]: m["valid_loss"] for m in map(json.loads, (out / METRICS_FILE).read_text().splitlines())
                    if "valid_loss" in m} for name, out in (("genrec", ours), ("trl", theirs))}
    assert sorted(valid["trl"]) == [0, 8] and final["step"] == 8
    assert valid["trl"][0] == pytest.approx(valid["genrec"][0], rel=1e-3)
    for name in valid:
        assert valid[name][8] < valid[name][0] - 0.5, valid
    assert valid["trl"][8] == pytest.approx(valid["genrec"][8], rel=0.02), valid
    # Checkpoints went through Ray Train (its HF checkpoint folder inside each), and final/ is genrec's format.
    assert list((theirs / "ray").glob("*/checkpoint_*/checkpoint/model.safetensors"))
    report = evaluate(EvaluateConfig(data_dir=str(prepared / "prepared"), checkpoint_dir=str(theirs / "final"),
                                     out_dir=str(theirs / "eval"), max_users=8, batch_size=8, num_beams=5, top_k=5,
                                     ks=[5], max_len=256))
    assert report["users"] == 8 and report["hallucination_rate"] == 0.0
