"""`<run>/report.md` with PNG plots: SFT loss curves, HR@K / NDCG@K bars, any jsonl log's curves.

    write_report(run_dir, [
        sft_loss("SFT", run / "sft"),                                   # <sft out_dir>/metrics.jsonl
        ranking("Test ranking", {"genrec": run / "eval/genrec/report.json", "pop": run / "eval/pop/report.json"}),
        curves("PPO", run / "ppo/metrics.jsonl", x="iteration", keys=["reward_mean", "kl", "true_fit"]),
        compare("Tune trials", {"trial_1": t1 / "metrics.jsonl", ...}, x="step", key="valid_loss"),
        text("Summary", markdown),
    ])  -> run_dir/report.md, plots in run_dir/plots/

A section is a plain dict (the helpers build them), so a caller can also write one by hand. What a
section cannot show (a missing file, a key no line has, unreadable lines) is said in the report.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and in Ray jobs
import matplotlib.pyplot as plt  # noqa: E402

PLOTS = "plots"


# -------------------------------------------------------------------------------------- sections
def sft_loss(title: str, sft_dir: str | Path) -> dict:
    """Training and validation loss against the step, from a train-sft out_dir's metrics.jsonl."""
    return {"kind": "sft_loss", "title": title, "path": str(Path(sft_dir) / "metrics.jsonl")}


def ranking(title: str, reports: dict[str, str | Path], ks: tuple[int, ...] | None = None) -> dict:
    """HR@K and NDCG@K bars, one bar per model, from evaluation report.json files (`genrec evaluate`
    writes metrics; `genrec evaluate-jobs` writes one set per method, shown as `name/method`)."""
    return {"kind": "ranking", "title": title, "reports": {k: str(v) for k, v in reports.items()},
            "ks": list(ks) if ks else None}


def curves(title: str, path: str | Path, x: str, keys: list[str]) -> dict:
    """One panel per key against x, from a jsonl log (e.g. PPO's reward / KL / true fit per iteration)."""
    return {"kind": "curves", "title": title, "path": str(path), "x": x, "keys": list(keys)}


def compare(title: str, logs: dict[str, str | Path], x: str, key: str) -> dict:
    """One panel, one line per run: `key` against `x` from each run's jsonl log (e.g. Tune trials)."""
    return {"kind": "compare", "title": title, "logs": {k: str(v) for k, v in logs.items()}, "x": x, "key": key}


def text(title: str, body: str) -> dict:
    return {"kind": "text", "title": title, "body": body}


# ---------------------------------------------------------------------------------------- writing
def write_report(run_dir: str | Path, sections: list[dict], title: str = "") -> Path:
    """Write run_dir/report.md (and run_dir/plots/*.png); returns the report's path."""
    run = Path(run_dir)
    (run / PLOTS).mkdir(parents=True, exist_ok=True)
    lines = [f"# {title or 'genrec run: ' + run.name}", ""]
    used: set[str] = set()
    for section in sections:
        slug = _unique(_slug(section["title"]), used)
        lines += [f"## {section['title']}", ""]
        writer = WRITERS.get(section.get("kind"))
        if writer is None:
            raise ValueError(f"section {section['title']!r}: unknown kind {section.get('kind')!r}; "
                             f"known: {sorted(WRITERS)}")
        lines += writer(section, run, slug)
        lines.append("")
    path = run / "report.md"
    path.write_text("\n".join(lines))
    return path


def read_jsonl(path: Path) -> tuple[list[dict], int]:
    """The log's records and how many lines were not JSON objects (a run killed mid-write)."""
    records, bad = [], 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(record, dict):
            records.append(record)
        else:
            bad += 1
    return records, bad


def series(records: list[dict], x: str, key: str) -> tuple[list[float], list[float]]:
    """(x, value) for every record holding both; a repeated x (a resumed run redoes steps) keeps the last."""
    points: dict[float, float] = {}
    for r in records:
        if _number(r.get(x)) and _number(r.get(key)):
            points[r[x]] = r[key]
    xs = sorted(points)
    return xs, [points[v] for v in xs]


def _sft_loss(section: dict, run: Path, slug: str) -> list[str]:
    path = Path(section["path"])
    if not path.exists():
        return [f"_No log at `{path}`._"]
    records, bad = read_jsonl(path)
    train, valid = series(records, "step", "loss"), series(records, "step", "valid_loss")
    if not train[0] and not valid[0]:
        return [f"_`{path}` holds no loss or valid_loss values._"]
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    if train[0]:
        ax.plot(*train, label="training loss", color="tab:blue")
    if valid[0]:
        ax.plot(*valid, marker="o", label="validation loss", color="tab:orange")
    ax.set(xlabel="optimizer step", ylabel="loss (response tokens)", title=section["title"])
    ax.grid(alpha=0.3)
    ax.legend()
    lines = [_save(fig, run, slug)]
    rows = [("training loss", train), ("validation loss", valid)]
    lines += ["", "| curve | first (step) | last (step) | min |", "| --- | --- | --- | --- |"]
    lines += [f"| {name} | {ys[0]:.4f} ({xs[0]:g}) | {ys[-1]:.4f} ({xs[-1]:g}) | {min(ys):.4f} |"
              for name, (xs, ys) in rows if xs]
    return lines + _bad_lines(path, bad)


def _ranking(section: dict, run: Path, slug: str) -> list[str]:
    models: dict[str, dict] = {}
    notes = []
    for name, file in section["reports"].items():
        path = Path(file)
        if not path.exists():
            notes.append(f"_{name}: no report at `{path}`._")
            continue
        report = json.loads(path.read_text())
        if "methods" in report:  # evaluate-jobs: several rankings in one report
            for method, metrics in report["methods"].items():
                models[f"{name}/{method}"] = {"metrics": metrics, "users": report.get("users", report.get("cvs"))}
        else:
            models[name] = {"metrics": report.get("metrics", {}), "users": report.get("users"),
                            "hallucination_rate": report.get("hallucination_rate")}
    if not models:
        return notes or ["_No reports._"]
    ks = section.get("ks") or sorted({int(k.split("@")[1]) for m in models.values() for k in m["metrics"]
                                      if k.startswith("hr@")})
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=False)
    width = 0.8 / len(models)
    for panel, metric in zip(axes, ("hr", "ndcg")):
        for i, (name, m) in enumerate(models.items()):
            values = [m["metrics"].get(f"{metric}@{k}", math.nan) for k in ks]
            panel.bar([j + i * width for j in range(len(ks))], values, width, label=name)
        panel.set_xticks([j + width * (len(models) - 1) / 2 for j in range(len(ks))], [f"@{k}" for k in ks])
        panel.set(title=f"{metric.upper()}@K", ylabel=metric.upper())
        panel.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(section["title"])
    lines = [_save(fig, run, slug), ""]
    header = ["model", "users"] + [f"{m}@{k}" for m in ("hr", "ndcg") for k in ks] + ["hallucinated"]
    lines += ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for name, m in models.items():
        cells = [name, str(m.get("users", ""))]
        cells += [_fmt(m["metrics"].get(f"{metric}@{k}")) for metric in ("hr", "ndcg") for k in ks]
        rate = m.get("hallucination_rate")
        cells.append(f"{rate:.1%}" if _number(rate) else "")
        lines.append("| " + " | ".join(cells) + " |")
    return lines + ([""] + notes if notes else [])


def _curves(section: dict, run: Path, slug: str) -> list[str]:
    path = Path(section["path"])
    if not path.exists():
        return [f"_No log at `{path}`._"]
    records, bad = read_jsonl(path)
    present = {key: series(records, section["x"], key) for key in section["keys"]}
    absent = [k for k, (xs, _) in present.items() if not xs]
    present = {k: v for k, v in present.items() if v[0]}
    if not present:
        return [f"_`{path}` holds none of {section['keys']} against {section['x']}._"]
    fig, axes = plt.subplots(1, len(present), figsize=(4.2 * len(present), 3.4), squeeze=False)
    for ax, (key, (xs, ys)) in zip(axes[0], present.items()):
        ax.plot(xs, ys, marker="o" if len(xs) < 30 else None)
        ax.set(xlabel=section["x"], title=key)
        ax.grid(alpha=0.3)
    fig.suptitle(section["title"])
    lines = [_save(fig, run, slug), "", f"| {section['x']} | " + " | ".join(present) + " |",
             "|" + " --- |" * (len(present) + 1)]
    by_x: dict = {}
    for key, (xs, ys) in present.items():
        for x, y in zip(xs, ys):
            by_x.setdefault(x, {})[key] = y
    shown = sorted(by_x)
    if len(shown) > 12:  # the first, the last and evenly spaced ones between
        shown = [shown[round(i * (len(shown) - 1) / 11)] for i in range(12)]
    lines += [f"| {x:g} | " + " | ".join(_fmt(by_x[x].get(k)) for k in present) + " |" for x in shown]
    if absent:
        lines += ["", f"_No values of {absent} in `{path}`._"]
    return lines + _bad_lines(path, bad)


def _compare(section: dict, run: Path, slug: str) -> list[str]:
    x, key = section["x"], section["key"]
    lines_of: dict[str, tuple[list, list]] = {}
    notes = []
    for name, file in section["logs"].items():
        path = Path(file)
        records, bad = read_jsonl(path) if path.exists() else ([], 0)
        xs, ys = series(records, x, key)
        if xs:
            lines_of[name] = (xs, ys)
        else:
            notes.append(f"_{name}: no {key} against {x} in `{path}`._")
        notes += _bad_lines(path, bad)[1:]
    if not lines_of:
        return notes
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for name, (xs, ys) in lines_of.items():
        ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, label=name)
    ax.set(xlabel=x, ylabel=key, title=section["title"])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    lines = [_save(fig, run, slug), "", f"| run | last {x} | last {key} | min {key} | max {key} |",
             "| --- | --- | --- | --- | --- |"]
    lines += [f"| {name} | {xs[-1]:g} | {_fmt(ys[-1])} | {_fmt(min(ys))} | {_fmt(max(ys))} |"
              for name, (xs, ys) in lines_of.items()]
    return lines + ([""] + notes if notes else [])


def _text(section: dict, run: Path, slug: str) -> list[str]:
    return [section["body"]]


WRITERS = {"sft_loss": _sft_loss, "ranking": _ranking, "curves": _curves, "compare": _compare, "text": _text}


# ------------------------------------------------------------------------------ pipeline sections
def sections_for_run(summary: dict) -> list[dict]:
    """Report sections for a ray_jobs/pipeline.py run, from the stages it ran (by verb)."""
    stages = summary["stages"]
    rows = ["| stage | verb | seconds | |", "| --- | --- | --- | --- |"]
    rows += [f"| {name} | {s['verb']} | {s.get('seconds', '')} | {'skipped: ' + s['skipped'] if 'skipped' in s else ''} |"
             for name, s in stages.items()]
    sections = [text("Stages", "\n".join(rows))]
    evaluations, job_evaluations = {}, {}
    for name, s in stages.items():
        if "skipped" in s:
            continue
        out = Path(s["config"].get("out_dir", ""))
        if s["verb"] == "train-sft":
            sections.append(sft_loss(f"SFT loss: {name}", out))
        elif s["verb"] == "evaluate":
            model = s["config"].get("model")
            label = model if model != "checkpoint" else "/".join(Path(s["config"]["checkpoint_dir"]).parts[-2:])
            evaluations[label] = out / "report.json"  # e.g. pop, sasrec, sft/final
        elif s["verb"] == "evaluate-jobs":
            job_evaluations[name] = out / "report.json"
        elif s["verb"] == "ppo":
            sections.append(curves(f"PPO: {name}", out / "metrics.jsonl", x="iteration",
                                   keys=["reward_mean", "kl", "true_fit"]))
            if (out / "eval.jsonl").exists():
                # learned reward and true fit on the same held-out CVs: over-optimisation is the first
                # rising while the second falls
                sections.append(curves(f"RL held-out curves: {name}", out / "eval.jsonl", x="iteration",
                                       keys=["reward_mean", "true_fit", "response_length"]))
                sections.append(ppo_evaluations(f"PPO held-out evaluation: {name}", out / "eval.jsonl"))
        elif s["verb"] == "train-reward" and (out / "metrics.jsonl").exists():
            sections.append(curves(f"Reward model: {name}", out / "metrics.jsonl", x="step",
                                   keys=["loss", "valid_loss", "valid_pairwise_acc"]))
    if evaluations:
        sections.append(ranking("Next-item ranking (full catalog)", evaluations))
    if job_evaluations:
        sections.append(ranking("Job recommendation", job_evaluations))
    return sections


def ppo_evaluations(title: str, log: Path) -> dict:
    """PPO's fixed evaluations (eval.jsonl): the same held-out prompts and seeds after 0, ..., N updates."""
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    keys = [k for k in ("reward_mean", "true_fit", "response_length", "eos_rate") if rows and k in rows[0]]
    lines = ["| updates | responses | " + " | ".join(keys) + " |", "|---:|---:|" + "---:|" * len(keys)]
    lines += [f"| {r['iteration']} | {r['responses']} | " + " | ".join(f"{r[k]:.3f}" for k in keys) + " |" for r in rows]
    return text(title, "\n".join(lines))


# ---------------------------------------------------------------------------------------- helpers
def _save(fig, run: Path, slug: str) -> str:
    fig.tight_layout()
    path = run / PLOTS / f"{slug}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"![{slug}]({PLOTS}/{slug}.png)"


def _bad_lines(path: Path, bad: int) -> list[str]:
    return ["", f"_{bad} line(s) of `{path.name}` were not JSON records and were left out._"] if bad else []


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if _number(v) else ""


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", title.lower()).strip("_") or "plot"


def _unique(slug: str, used: set[str]) -> str:
    name, i = slug, 2
    while name in used:
        name, i = f"{slug}_{i}", i + 1
    used.add(name)
    return name
