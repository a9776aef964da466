"""Counting malformed input: nothing is dropped without a count and an example.

Readers run inside Ray Data tasks, so per-task counts go to one small `RejectLog` actor; the driver
reads the totals once the pipeline has run. In strict mode the first reject raises instead,
quoting the line and where it was.
"""
from __future__ import annotations

import dataclasses

import ray


class RejectError(ValueError):
    """A malformed row under strict=true."""


@dataclasses.dataclass
class Rejects:
    """Counts per reason, and the first example of each (file:line and the line itself)."""

    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    examples: dict[str, str] = dataclasses.field(default_factory=dict)

    def add(self, reason: str, where: str, line: str = "", n: int = 1, strict: bool = False) -> None:
        if n <= 0:
            return
        example = f"{where}: {line[:200]!r}" if line else where
        if strict:
            raise RejectError(f"{reason} at {example} (strict=true stops at the first malformed row)")
        self.counts[reason] = self.counts.get(reason, 0) + n
        self.examples.setdefault(reason, example)

    def merge(self, other: "Rejects") -> "Rejects":
        for reason, n in other.counts.items():
            self.counts[reason] = self.counts.get(reason, 0) + n
            self.examples.setdefault(reason, other.examples.get(reason, ""))
        return self

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict:
        return {"counts": dict(sorted(self.counts.items())), "examples": dict(sorted(self.examples.items()))}


@ray.remote(num_cpus=0)
class RejectLog:
    """Collects `Rejects` from Ray Data tasks; one per pipeline run."""

    def __init__(self) -> None:
        self.rejects = Rejects()

    def add(self, rejects: Rejects) -> None:
        # Callers wait on this call (ray.get) so the totals are complete when their task ends.
        self.rejects.merge(rejects)

    def get(self) -> Rejects:
        return self.rejects


def report(log, rejects: Rejects) -> None:
    """Send a task's rejects to the log and wait, so none are in flight when the pipeline ends."""
    if rejects.counts:
        ray.get(log.add.remote(rejects))
