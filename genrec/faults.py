"""Fault injection for tests: no config key reaches it.

A test writes `<out_dir>/faults.json` before a run, e.g. {"crash_at_step": 6} (train-sft,
train-reward: a Ray Train worker) or {"crash_at_iteration": 3} (ppo: rollout worker 0), and the
process exits there once, as a crash would. The marker `<out_dir>/.failed_once` (holding the step or
iteration) keeps the restarted worker, and a rerun of the same out_dir, from dying again, so a
test can check that Ray restarts the worker and that the run resumes from its last checkpoint.

{"hold_at_step": 6} (train-sft: every worker) and {"hold_at_iteration": 3} (ppo: rollout worker 0)
wait there, once, for up to HOLD_S seconds: time for a test to kill a node under a run that is known
to be mid-way.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable

FAULTS_FILE = "faults.json"
FAILED_ONCE = ".failed_once"
HOLD_S = 600.0


def plan_crash(out_dir: str | Path, **where: int) -> None:
    """For tests: make the run in out_dir crash once at `crash_at_step` or `crash_at_iteration`."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / FAULTS_FILE).write_text(json.dumps(where))


def crash_planned(out_dir: str | Path, key: str, position: int) -> bool:
    """Whether faults.json plans a crash at `key` == position that has not happened yet."""
    faults, marker = Path(out_dir) / FAULTS_FILE, Path(out_dir) / FAILED_ONCE
    return faults.exists() and not marker.exists() and json.loads(faults.read_text()).get(key) == position


def crash_once(out_dir: str | Path, key: str, position: int) -> None:
    """Exit this process if faults.json plans a crash at `key` == position and none happened yet."""
    if crash_planned(out_dir, key, position):
        (Path(out_dir) / FAILED_ONCE).write_text(str(position))
        os._exit(1)


def hold_once(out_dir: str | Path, key: str, position: int, marked: Callable[[], None] = lambda: None) -> None:
    """Wait here for up to HOLD_S seconds if faults.json plans a hold at `key` == position that has not
    happened yet. `marked` runs once the marker is written (a remote out_dir pushes it there)."""
    if crash_planned(out_dir, key, position):
        (Path(out_dir) / FAILED_ONCE).write_text(str(position))
        marked()
        time.sleep(HOLD_S)
