"""genrec.report: plots and tables from logs and reports in the formats the stages write.

The real outputs (a submitted SFT job's metrics.jsonl, a pipeline's evaluation reports) are turned
into reports in tests/test_job_submit.py; these tests cover what the writer does with the awkward
cases: a resumed run's repeated steps, a torn last line, a key no line has, a missing report.
"""
import json

import matplotlib.image
import pytest

from genrec.report import compare, curves, ranking, read_jsonl, sft_loss, text, write_report


def png_shape(path):
    return matplotlib.image.imread(path).shape  # fails on anything that is not an image


def write_jsonl(path, records, tail=""):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n" + tail)


def test_report_plots_losses_rankings_and_curves_and_says_what_it_could_not_show(tmp_path):
    # train-sft's metrics.jsonl: validation at step 0, training lines, then a resumed run redoing step 3.
    write_jsonl(tmp_path / "sft" / "metrics.jsonl", [
        {"step": 0, "valid_loss": 6.0}, {"step": 1, "loss": 5.9, "lr": 1e-3}, {"step": 2, "loss": 5.5, "valid_loss": 5.6},
        {"step": 3, "loss": 9.9}, {"step": 3, "loss": 5.1}, {"step": 4, "loss": 4.8, "valid_loss": 5.0},
    ])
    # evaluate's report.json (one model) and evaluate-jobs' (one set of metrics per method).
    for name, hr10 in (("genrec", 0.25), ("pop", 0.125)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "report.json").write_text(json.dumps({
            "model": name, "split": "test", "users": 8, "hallucination_rate": 0.0,
            "metrics": {"hr@1": 0.0, "hr@10": hr10, "ndcg@1": 0.0, "ndcg@10": hr10 / 2}}))
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "report.json").write_text(json.dumps({"cvs": 5, "methods": {
        "embed_cv": {"hr@1": 0.2, "hr@10": 0.6, "ndcg@1": 0.2, "ndcg@10": 0.4},
        "reward_only": {"hr@1": 0.0, "hr@10": 0.4, "ndcg@1": 0.0, "ndcg@10": 0.1}}}))
    # A PPO log with a torn last line (a killed writer) and no entropy key.
    write_jsonl(tmp_path / "ppo.jsonl", [{"iteration": i, "reward_mean": 0.1 * i, "kl": 0.01 * i, "true_fit": 0.5}
                                          for i in range(1, 6)], tail='{"iteration": 6, "rew')

    path = write_report(tmp_path, [
        text("Summary", "| a | b |\n| --- | --- |\n| 1 | 2 |"),
        sft_loss("SFT", tmp_path / "sft"),
        ranking("Ranking", {"genrec": tmp_path / "genrec/report.json", "pop": tmp_path / "pop/report.json",
                            "sasrec": tmp_path / "sasrec/report.json"}),
        ranking("Jobs", {"eval": tmp_path / "jobs/report.json"}),
        curves("PPO", tmp_path / "ppo.jsonl", x="iteration", keys=["reward_mean", "kl", "true_fit", "entropy"]),
        compare("Two runs", {"a": tmp_path / "sft/metrics.jsonl", "b": tmp_path / "nowhere.jsonl"}, "step", "valid_loss"),
    ], title="demo")
    report = path.read_text()
    assert path == tmp_path / "report.md" and report.startswith("# demo\n")
    for slug in ("sft", "ranking", "jobs", "ppo", "two_runs"):
        assert f"](plots/{slug}.png)" in report
        height, width, _ = png_shape(tmp_path / "plots" / f"{slug}.png")
        assert height > 100 and width > 100
    assert "| 1 | 2 |" in report
    # A repeated step keeps its last value (the resumed run's): min 4.8, and step 3 shows 5.1, not 9.9.
    assert "| training loss | 5.9000 (1) | 4.8000 (4) | 4.8000 |" in report
    assert "| validation loss | 6.0000 (0) | 5.0000 (4) | 5.0000 |" in report
    assert "| genrec | 8 | 0.0000 | 0.2500 | 0.0000 | 0.1250 | 0.0% |" in report
    assert "| pop | 8 | 0.0000 | 0.1250 | 0.0000 | 0.0625 | 0.0% |" in report
    assert "_sasrec: no report at" in report
    assert "| eval/embed_cv | 5 | 0.2000 | 0.6000 | 0.2000 | 0.4000 |  |" in report
    assert "_1 line(s) of `ppo.jsonl` were not JSON records and were left out._" in report
    assert "No values of ['entropy']" in report
    assert "| 5 | 0.5000 | 0.0500 | 0.5000 |" in report
    assert "_b: no valid_loss against step in" in report


def test_read_jsonl_counts_lines_that_are_not_records(tmp_path):
    (tmp_path / "log.jsonl").write_text('{"a": 1}\n\n[1, 2]\nnot json\n{"a": 2}\n')
    records, bad = read_jsonl(tmp_path / "log.jsonl")
    assert records == [{"a": 1}, {"a": 2}] and bad == 2


def test_report_rejects_an_unknown_section_kind(tmp_path):
    with pytest.raises(ValueError, match="unknown kind 'pie'"):
        write_report(tmp_path, [{"kind": "pie", "title": "x"}])


def test_a_pipeline_rl_stage_plots_its_held_out_learned_reward_and_true_fit(tmp_path):
    from genrec.report import sections_for_run

    ppo = tmp_path / "ppo"
    write_jsonl(ppo / "metrics.jsonl", [{"iteration": i, "reward_mean": 0.1 * i, "kl": 0.1, "true_fit": 0.6}
                                        for i in range(1, 5)])
    write_jsonl(ppo / "eval.jsonl", [{"iteration": i, "responses": 8, "reward_mean": 1.0 + i, "true_fit": 0.6 - 0.01 * i,
                                      "response_length": 60.0, "eos_rate": 1.0} for i in (0, 2, 4)])
    summary = {"stages": {"rl": {"verb": "ppo", "config": {"out_dir": str(ppo)}, "seconds": 1.0}}}
    report = write_report(tmp_path, sections_for_run(summary)).read_text()
    assert "## RL held-out curves: rl" in report and "## PPO held-out evaluation: rl" in report
    assert png_shape(tmp_path / "plots" / "rl_held_out_curves_rl.png")[2] in (3, 4)
    assert "| 4 | 8 | 5.000 | 0.560 |" in report  # the last evaluation: reward up, true fit down
