"""Configs from YAML and key=value overrides; the CLI's help and errors."""
import subprocess
import sys

import pytest

from genrec.cli import main
from genrec.config import (ConfigError, PPOConfig, PrepareConfig, RewardConfig, SFTConfig, SynthInteractionsConfig,
                           describe, load_config)


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("history_len: 5\nsource:\n  format: movielens\n  path: /data/ml\n")
    cfg = load_config(PrepareConfig, path, ["source.strict=true", "samples_per_user=3", "domain=movies"])
    assert cfg.history_len == 5 and cfg.source.format == "movielens" and cfg.source.path == "/data/ml"
    assert cfg.source.strict is True and cfg.samples_per_user == 3 and cfg.domain == "movies"
    assert load_config(PrepareConfig, None, ["samples_per_user=all"]).samples_per_user == "all"
    # str fields keep what was typed; YAML would read these as a number and a date
    cfg = load_config(SFTConfig, None, ["run_name=007", "data_dir=2024-01-01", "lr=1e-3"])
    assert (cfg.run_name, cfg.data_dir, cfg.lr) == ("007", "2024-01-01", 1e-3)
    # a comma list: each element read as its field's type
    from genrec.config import EvaluateConfig, PPOConfig

    assert load_config(EvaluateConfig, None, ["ks=1,5", "top_k=5", "num_beams=5"]).ks == [1, 5]
    assert load_config(EvaluateConfig, None, ["ks=[1, 5]", "top_k=5", "num_beams=5"]).ks == [1, 5]
    assert load_config(PPOConfig, None, ["lora_target_modules=q_proj,v_proj"]).lora_target_modules == ["q_proj", "v_proj"]


@pytest.mark.parametrize("override,key", [
    ("bogus=1", "bogus"),
    ("source.bogus=1", "source.bogus"),
    ("history_len=abc", "history_len"),
    ("history_len=0", "history_len"),
    ("samples_per_user=some", "samples_per_user"),
    ("source.format=xml", "source.format"),
    ("source.strict=maybe", "source.strict"),
    ("kcore=1.5", "kcore"),
    ("domain=books", "domain"),
    ("source.chunk_mb=0", "chunk_mb"),
])
def test_bad_keys_and_types_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(PrepareConfig, None, [override])


@pytest.mark.parametrize("cls", [PrepareConfig, SFTConfig, SynthInteractionsConfig])
def test_every_field_has_help(cls):
    rows = describe(cls)
    assert len(rows) >= 8 and all(help_text for *_, help_text in rows)
    assert {"source.format", "history_len"} <= {r[0] for r in describe(PrepareConfig)}


def test_cli_help_lists_fields_and_errors_name_the_key(capsys):
    out = subprocess.run([sys.executable, "-m", "genrec.cli", "prepare", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "source.format" in out.stdout and "history_len" in out.stdout
    out = subprocess.run([sys.executable, "-m", "genrec.cli", "train-sft", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "micro_batch_tokens" in out.stdout and "strategy" in out.stdout
    assert main(["prepare", "history_len=abc"]) == 2
    assert "history_len" in capsys.readouterr().err


def test_paths_handed_to_train_workers_are_absolute_and_hub_ids_stay(tmp_path, monkeypatch):
    """Ray Train runs each worker in a folder of its own: relative paths must not reach it."""
    from genrec.runtime import for_train_workers

    monkeypatch.chdir(tmp_path)
    (tmp_path / "prepared").mkdir()
    (tmp_path / "my-base").mkdir()
    cfg = for_train_workers(SFTConfig(data_dir="prepared", model="my-base", out_dir="runs/x"))
    assert cfg.data_dir == str(tmp_path / "prepared") and cfg.model == str(tmp_path / "my-base")
    assert cfg.out_dir == "runs/x"  # names nothing here yet: as written (the driver creates it first)
    hub = for_train_workers(SFTConfig(model="Qwen/Qwen2-0.5B"))
    assert hub.model == "Qwen/Qwen2-0.5B"
    (tmp_path / "tiny").mkdir()  # a folder named like the preset does not turn the preset into a path
    assert for_train_workers(SFTConfig(model="tiny")).model == "tiny"
    reward = for_train_workers(RewardConfig(data_dir="prepared", backbone="my-base", out_dir="prepared"))
    assert (reward.data_dir, reward.backbone, reward.out_dir) == (str(tmp_path / "prepared"),
                                                                  str(tmp_path / "my-base"), str(tmp_path / "prepared"))


def test_tune_resolves_input_paths_in_base_and_search_space_lists(tmp_path, monkeypatch):
    """A Tune trial runs in its trial folder: a relative model or data_dir, in base or among a search
    space's choices, must be made absolute by the driver (non-path values stay)."""
    from genrec.config import absolute_input_paths
    from genrec.tune import absolute_listed_paths

    monkeypatch.chdir(tmp_path)
    (tmp_path / "base_a").mkdir()
    (tmp_path / "prepared").mkdir()
    base = {"data_dir": "prepared", "model": "base_a", "lr": 1e-3}
    assert absolute_input_paths(SFTConfig, base) == {"data_dir": str(tmp_path / "prepared"),
                                                     "model": str(tmp_path / "base_a")}
    spec = {"choice": ["base_a", "tiny", "Qwen/Qwen2-0.5B"]}
    assert absolute_listed_paths(SFTConfig, "model", spec) == {"choice": [str(tmp_path / "base_a"), "tiny",
                                                                          "Qwen/Qwen2-0.5B"]}
    assert absolute_listed_paths(SFTConfig, "lr", {"choice": ["base_a"]}) == {"choice": ["base_a"]}  # not a path key
    ppo = absolute_input_paths(PPOConfig, {"policy_dir": "base_a", "reward_path": "missing", "truth_path": ""})
    assert ppo == {"policy_dir": str(tmp_path / "base_a")}
