"""`genrec tune` on real Ray Tune + Ray Train (CPU): two tiny SFT trials, the better one wins."""
import json

import pandas as pd
import yaml

from conftest import synth_and_prepare
from genrec.cli import main
from genrec.config import SFTConfig, load_config


def test_tune_picks_the_trial_with_the_good_learning_rate_on_cpu(ray_session, tmp_path):
    synth_and_prepare(tmp_path, num_users=120, num_items=200, history_len=8)
    base = dict(data_dir=str(tmp_path / "prepared"), model="tiny", vocab_size=512, tiny_hidden=32, tiny_layers=1,
                tiny_heads=2, max_len=192, micro_batch_tokens=768, warmup_steps=1, max_steps=8, eval_every=4,
                log_every=4, valid_rows=48, num_workers=1)
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    tune_yaml = {
        "stage": "sft", "base_config": str(tmp_path / "base.yaml"),
        # 1e-7 barely moves the weights: its validation loss stays near ln(vocab)
        "search_space": {"lr": {"grid": [1e-7, 5e-3]}}, "num_samples": 1,
        "scheduler": "asha", "grace_period": 2, "out_dir": str(tmp_path / "tune"),
    }
    (tmp_path / "tune.yaml").write_text(yaml.safe_dump(tune_yaml))

    assert main(["tune", "--config", str(tmp_path / "tune.yaml")]) == 0
    out = tmp_path / "tune"
    best = json.loads((out / "best.json").read_text())
    results = pd.read_csv(out / "results.csv")
    assert len(results) == 2 and set(results["lr"]) == {1e-7, 5e-3}
    assert best["lr"] == 5e-3 and best["status"] == "finished" and best["step"] == 8
    bad = results[results["lr"] == 1e-7].iloc[0]
    assert best["best_valid_loss"] < bad["best_valid_loss"] - 0.2, results.to_string()
    assert "| trial |" in (out / "results.md").read_text()
    # The winner's config trains with `genrec train-sft --config best_config.yaml` as is.
    cfg = load_config(SFTConfig, out / "best_config.yaml")
    assert cfg.lr == 5e-3 and cfg.max_steps == 8 and cfg.out_dir == str(out / "best_run")
    assert (out / "trials" / best["trial"] / "best" / "genrec.json").exists()
    # Both trials tokenized nothing themselves: the shards were built once and linked.
    assert (out / "trials" / best["trial"] / "tokens").is_symlink()
    # The sweep's report plots both trials' validation losses.
    report = (out / "report.md").read_text()
    assert "![valid_loss_per_trial](plots/valid_loss_per_trial.png)" in report
    assert (out / "plots" / "valid_loss_per_trial.png").stat().st_size > 1000
