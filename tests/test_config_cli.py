"""Configs from YAML and key=value overrides; the CLI's help and errors."""
import dataclasses
import logging
import re
import subprocess
import sys

import pytest

from genrec.cli import main
from genrec.config import Lora, PPOConfig, PrepareConfig, RewardConfig, SFTConfig, SynthInteractionsConfig
from genrec.config_loader import ConfigError, describe, load_config


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
    assert load_config(PPOConfig, None, ["lora.target_modules=q_proj,v_proj"]).lora.target_modules == ["q_proj", "v_proj"]


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


@pytest.mark.parametrize("override,message", [
    ("lora.r=0", "lora.r: must be at least 1, got 0"),
    ("tiny.dropout=1.0", "tiny.dropout: must be less than 1, got 1.0"),
    ("ray_train.num_workers=0", "ray_train.num_workers: must be at least 1, got 0"),
    ("max_len=1", "max_len: must be at least 2, got 1"),
    ("warmup_steps=-1", "warmup_steps: must be at least 0, got -1"),
    ("pack_len=100", "pack_len: must be 0 or at least max_len=512"),  # a rule across fields: validate()
])
def test_bounds_are_declared_with_the_field_and_checked_however_the_config_is_built(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(SFTConfig, None, [override])
    # Built in Python, not from a file: the same checks.
    with pytest.raises(ConfigError, match="r: must be at least 1"):
        Lora(r=0)
    assert "(at least 1)" in dict((row[0], row[3]) for row in describe(SFTConfig))["lora.r"]


def test_trainer_trl_refuses_what_only_genrecs_own_loop_does():
    assert load_config(SFTConfig, None, ["trainer=trl"]).trainer == "trl"
    for override, message in (("strategy=fsdp", "strategy: 'fsdp' is genrec's loop's own; trainer=trl takes strategy='ddp'"),
                              ("compile=true", "compile: True is genrec's loop's own")):
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_config(SFTConfig, None, ["trainer=trl", override])


def test_renamed_keys_still_load_under_their_new_names(caplog):
    with caplog.at_level(logging.WARNING, logger="genrec.config"):
        cfg = load_config(SFTConfig, None, ["tiny_layers=2", "lora=true", "lora_r=4", "num_workers=2"])
    assert (cfg.tiny.layers, cfg.lora.enabled, cfg.lora.r, cfg.ray_train.num_workers) == (2, True, 4, 2)
    assert cfg.tiny.hidden == 128 and cfg.lora.alpha == 32  # the rest of each section keeps its defaults
    assert "tiny_layers is now tiny.layers" in caplog.text and "num_workers is now ray_train.num_workers" in caplog.text
    # `lora:` written as the section it now is, not the old flag; PPO's own section default stays
    assert load_config(PPOConfig, None, ["lora={r: 8}"]).lora == Lora(r=8, dropout=0.0)
    assert load_config(RewardConfig, None, ["tiny.hidden=64"]).tiny.layers == 2  # the reward stage's default
    from genrec.config import TuneConfig

    with caplog.at_level(logging.WARNING, logger="genrec.config"):
        assert load_config(TuneConfig, None, ["stage=sft"]).stage == "train-sft"
    assert "stage=sft is now stage=train-sft" in caplog.text


def test_every_stage_has_one_record_that_the_cli_pipeline_and_tune_read():
    import typing

    from genrec.config import TuneConfig
    from genrec.stages import STAGES, SWEPT, resolve

    assert set(typing.get_args(typing.get_type_hints(TuneConfig)["stage"])) == set(SWEPT) == {
        "train-sft", "train-reward", "ppo"}
    for stage in STAGES.values():
        assert callable(resolve(stage.entry)), stage.name
        for ref in filter(None, dataclasses.astuple(stage.sweep) if stage.sweep else ()):
            if isinstance(ref, str) and ":" in ref:
                assert callable(resolve(ref)), (stage.name, ref)
    out = subprocess.run([sys.executable, "-m", "genrec.cli", "--help"], capture_output=True, text=True)
    assert all(name in out.stdout for name in STAGES)


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
    from genrec.config_loader import absolute_input_paths
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


def test_the_demo_ends_on_its_table_not_on_json(monkeypatch, capsys):
    import genrec.demo

    def fake_demo(out, wait):
        print("| stage | result | seconds |")
        return {"run": out, "stages": {}}

    monkeypatch.setattr(genrec.demo, "run_demo", fake_demo)
    assert main(["demo", "--out", "runs/x", "--no-wait"]) == 0
    printed = capsys.readouterr().out
    assert printed.rstrip().endswith("| stage | result | seconds |") and '"run"' not in printed
