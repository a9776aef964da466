"""The PPO driver: one loop over iterations that calls the role actors (genrec/rl/actors.py).

Each iteration: sync weights learner -> rollout workers (the adapter alone for LoRA, the full state
otherwise, put once in the object store), roll out in parallel, score, reference log-probs, PPO
update, log. Every phase is timed (`timing/<phase>` seconds) and every iteration writes one line
of metrics.jsonl. Every `save_every` iterations the learner writes a checkpoint; rerunning with the
same out_dir resumes from the newest. Sampling seeds are a function of (seed, iteration, worker),
so a retried or resumed iteration draws the same responses: a rollout worker that dies is restarted
by Ray (max_restarts), gets the weights again, and its share of the iteration is redone.

`advantage`: gae scores each response against the learner's value head; grpo and rloo sample
`samples_per_prompt` responses to each prompt and score each against the others (critic-free,
genrec/rl/ppo.py group_advantages), with the same actors and the same clipped update.

`off_policy`: the rollouts of iteration k+1 are launched right after the weights of iteration k
are synced, so they are sampled while iteration k scores, runs the reference and updates; the
update then sees tokens sampled by the weights one update older and reweights them (decoupled PPO,
genrec/rl/ppo.py importance_weights). A resumed off-policy run samples its first iteration on-policy,
so it does not repeat an uninterrupted one exactly. `num_learners` > 1 runs the learners as one
torch.distributed group that splits every minibatch (genrec/rl/policy.py Learner).

out_dir and the input paths may be object-store URIs (genrec/storage.py): each actor reads its
node's copy of the inputs, the learner pushes every checkpoint it writes, the driver its logs.

Written by hand because TRL no longer has a PPO trainer and OpenRLHF/verl target GPU fleets; this
one is small enough to read top to bottom.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import ray
import torch

from genrec.config import PPOConfig

from genrec.config_loader import save_config
from genrec.models.tokenizer import load_tokenizer
from genrec.rl import actors
from genrec.rl.policy import STATE_FILE
from genrec.rl.rewards import has_truth
from genrec.rl.rollout import Rollout
from genrec.runtime import init_ray
from genrec.storage import Mirror, is_uri, local_inputs

log = logging.getLogger("genrec.rl")
METRICS_FILE = "metrics.jsonl"
EVAL_FILE = "eval.jsonl"
CHECKPOINTS = "checkpoints"
WORKER_ERRORS = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)


# ------------------------------------------------------------------------------ prompts
def prompt_text(cfg: PPOConfig, text: str) -> str:
    if cfg.prompt_format == "raw":
        return text
    from genrec.girl.prompts import generator_prompt  # the generator's own prompt, never rebuilt here

    return generator_prompt(text)


class PromptSet:
    """The prompt sources (CVs), their token ids, and the hidden fields when the file has them.
    `split` keeps the rows whose `split` column equals it; `limit` the first rows."""

    def __init__(self, cfg: PPOConfig, tokenizer, split: str = "", limit: int = 0):
        table = pq.read_table(cfg.prompts_path)
        if cfg.prompt_column not in table.column_names:
            raise ValueError(f"{cfg.prompts_path}: no column {cfg.prompt_column!r} (prompt_column); "
                             f"columns: {table.column_names}")
        rows = table.to_pylist()
        if split:
            if "split" not in table.column_names:
                raise ValueError(f"{cfg.prompts_path}: no `split` column to select split={split!r} from")
            rows = [r for r in rows if r["split"] == split]
        rows = rows[:limit] if limit else rows
        if not rows:
            raise ValueError(f"{cfg.prompts_path}: no rows" + (f" with split == {split!r}" if split else ""))
        self.texts = []
        for i, row in enumerate(rows):
            text = row[cfg.prompt_column]
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"{cfg.prompts_path} row {i}: {cfg.prompt_column} is empty or not text: {text!r}")
            self.texts.append(text)
        rendered = [prompt_text(cfg, t) for t in self.texts]
        self.ids = tokenizer(rendered, split_special_tokens=True)["input_ids"]
        for i, ids in enumerate(self.ids):
            if len(ids) > cfg.max_prompt_tokens:
                raise ValueError(f"{cfg.prompts_path} row {i}: the prompt has {len(ids)} tokens, more than "
                                 f"max_prompt_tokens={cfg.max_prompt_tokens}")
        if cfg.truth_path and not has_truth(rows):
            rows = _join_truth(rows, cfg)
        self.truth = {r[cfg.prompt_column]: r for r in rows} if has_truth(rows) else None
        self.seed = cfg.seed

    def batch(self, iteration: int, size: int) -> list[int]:
        """Row indices of an iteration: consecutive slices of per-epoch permutations of (seed, epoch)."""
        n, out, orders = len(self.texts), [], {}
        for k in range(iteration * size, (iteration + 1) * size):
            epoch, pos = divmod(k, n)
            if epoch not in orders:
                orders[epoch] = np.random.default_rng([self.seed, epoch]).permutation(n)
            out.append(int(orders[epoch][pos]))
        return out


def _join_truth(rows: list[dict], cfg: PPOConfig) -> list[dict]:
    """The prompt rows with the true_ columns of truth_path added by cv_id; a CV without them is an error."""
    truth = {r["cv_id"]: r for r in pq.read_table(cfg.truth_path).to_pylist()}
    joined = []
    for i, row in enumerate(rows):
        if "cv_id" not in row:
            raise ValueError(f"truth_path needs a cv_id column in {cfg.prompts_path}")
        found = truth.get(row["cv_id"])
        if found is None or not has_truth([found]):
            raise ValueError(f"{cfg.prompts_path} row {i}: cv_id {row['cv_id']!r} has no true_ fields in {cfg.truth_path}")
        joined.append({**row, **{k: v for k, v in found.items() if k.startswith("true_")}})
    return joined


# ------------------------------------------------------------------------------ driver
class PPORun:
    """setup / train / save_checkpoint / cleanup, as a torchtune recipe."""

    def __init__(self, cfg: PPOConfig, report: Callable[[dict], None] | None = None):
        if not is_uri(cfg.out_dir):  # every actor finds it, whatever folder Ray starts it in
            cfg = dataclasses.replace(cfg, out_dir=str(Path(cfg.out_dir).resolve()))
        self.cfg, self.report = cfg, report
        self.out_dir = Mirror(cfg.out_dir)
        self.out = self.out_dir.local
        self.restarts = 0
        self.pending: dict | None = None  # off_policy: the next iteration's rollouts, launched early

    def setup(self) -> None:
        cfg = self.cfg
        init_ray()
        self.out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.out / "config.yaml")
        self.out_dir.push("config.yaml")
        local = local_inputs(cfg)  # the driver's copies; every actor makes its own from cfg
        self.tokenizer = load_tokenizer(local.policy_dir)
        self.prompts = PromptSet(local, self.tokenizer, split=cfg.prompt_split)
        self.eval_prompts = (PromptSet(local, self.tokenizer, split=cfg.eval_split or cfg.prompt_split, limit=cfg.eval_size)
                             if cfg.eval_size else None)
        placement = actors.resources(cfg)
        self.learners = [actors.Learner.options(**placement["learner"]).remote(cfg, rank, cfg.num_learners)
                         for rank in range(cfg.num_learners)]
        self.learner = self.learners[0]  # rank 0: the weights workers sync from, and the checkpoints
        if cfg.num_learners > 1:
            address = ray.get(self.learner.address.remote())
            ray.get([learner.join.remote(address) for learner in self.learners])
        self.reference = actors.ReferencePolicy.options(**placement["reference"]).remote(cfg)
        # reward=true_fit scores the evaluation's CVs too, which another split may hold
        truth = {**(self.prompts.truth or {}), **((self.eval_prompts.truth or {}) if self.eval_prompts else {})}
        self.scorer = actors.RewardScorer.options(**placement["scorer"]).remote(cfg, truth or None)
        self.workers = [
            actors.RolloutWorker.options(**placement["rollout"], max_restarts=cfg.max_restarts,
                                         max_task_retries=0).remote(cfg, i)
            for i in range(cfg.num_rollout_workers)
        ]
        self.start = self._resume()

    def _resume(self) -> int:
        latest = latest_checkpoint(self.out_dir)
        if latest is None:
            ray.get(self.learner.weights.remote())  # wait for the learner to load
            return 0
        state = ray.get([learner.load.remote(self.out_dir.location, latest) for learner in self.learners])[0]
        self.restarts = int(state["extra"].get("restarts", 0))
        start = int(state["iteration"])
        self.out_dir.pull(METRICS_FILE, EVAL_FILE)
        _truncate_log(self.out / METRICS_FILE, start)
        _truncate_log(self.out / EVAL_FILE, start - 1)  # the evaluation at `start` runs again
        self.out_dir.push(*[name for name in (METRICS_FILE, EVAL_FILE) if (self.out / name).exists()])
        log.info("resuming from %s at iteration %d", latest, start)
        return start

    def train(self) -> dict:
        cfg, last = self.cfg, {}
        for iteration in range(self.start, cfg.iterations):
            last = self.iteration(iteration)
            if (iteration + 1) % cfg.save_every == 0 or iteration + 1 == cfg.iterations:
                self.save_checkpoint(iteration + 1, last)
        if self.eval_prompts is not None:  # the policy after the last update
            weights = self.learner.weights.remote()
            self._sync(weights)
            self.evaluate(cfg.iterations, weights)
        final = self.out / "final"
        latest = latest_checkpoint(self.out_dir)
        if latest is not None:
            self.out_dir.pull(latest)
            if final.exists():
                shutil.rmtree(final)
            shutil.copytree(self.out / latest, final)
            self.out_dir.push("final", last=STATE_FILE)
        return {"out_dir": str(self.out), "iterations": cfg.iterations, "restarts": self.restarts,
                "final": str(final), "last": last, "eval": read_metrics(self.out, EVAL_FILE)}

    def iteration(self, iteration: int) -> dict:
        cfg, timing = self.cfg, {}
        started = time.perf_counter()

        rows, rollout = self.rows(iteration), None
        if self.pending is not None:  # off-policy: sampled during the last update, with the weights before it
            t = time.perf_counter()
            rollout, self.pending = self._collect(self.pending), None
            timing["generate"] = time.perf_counter() - t  # only the part the last update did not hide

        t = time.perf_counter()
        weights = self.learner.weights.remote()  # stays in the object store; every worker reads it
        self._sync(weights)
        timing["sync"] = time.perf_counter() - t
        evaluation = {}
        if self.eval_prompts is not None and (iteration == 0 or (cfg.eval_every and iteration % cfg.eval_every == 0)):
            t = time.perf_counter()
            evaluation = self.evaluate(iteration, weights)  # the policy before this iteration's update
            timing["eval"] = time.perf_counter() - t

        if rollout is None:  # on-policy, or the first iteration of an off-policy run
            t = time.perf_counter()
            rollout = self._collect(self._launch(rows, iteration, weights))
            timing["generate"] = time.perf_counter() - t
        if cfg.off_policy and iteration + 1 < cfg.iterations:
            # The next iteration's rollouts, sampled with these weights while score, ref and update run.
            self.pending = self._launch(self.rows(iteration + 1), iteration + 1, weights)

        sources = [self.prompts.texts[i] for i in rows]
        responses = self._decode(rollout)
        t = time.perf_counter()
        scores = np.asarray(ray.get(self.scorer.score.remote(sources, responses)), dtype=np.float32)
        timing["score"] = time.perf_counter() - t
        if scores.shape != (len(rows),) or not np.isfinite(scores).all():
            raise ValueError(f"the reward returned {scores.shape} scores (finite: {np.isfinite(scores).all()}) "
                             f"for {len(rows)} responses")

        t = time.perf_counter()
        ref_logp = ray.get(self.reference.log_probs.remote(rollout))
        timing["ref"] = time.perf_counter() - t

        t = time.perf_counter()
        # every learner gets the same batch (through the object store) and returns the same metrics
        batch = [ray.put(x) for x in (rollout, scores, ref_logp)]  # stored once, read by every learner
        metrics = ray.get([learner.step.remote(*batch, iteration) for learner in self.learners])[0]
        timing["update"] = time.perf_counter() - t
        timing["iteration"] = time.perf_counter() - started

        tokens = float(rollout.mask.sum())
        record = {"iteration": iteration + 1, "responses": len(rows), "reward_mean": float(scores.mean()),
                  "reward_std": float(scores.std()), **metrics, "eos_rate": float(rollout.eos.float().mean()),
                  "response_tokens": tokens,
                  # per second of the slowest worker's own sampling time (whether or not it overlapped)
                  "tokens_per_s": tokens / max(rollout.seconds, 1e-9), "restarts": self.restarts,
                  **{f"eval/{k}": v for k, v in evaluation.items() if k != "iteration"},
                  **{f"timing/{k}": v for k, v in timing.items()}}
        if self.prompts.truth is not None:  # the hidden ground truth: the check against reward hacking
            from genrec.girl.true_fit import fit_of_text

            record["true_fit"] = float(np.mean([fit_of_text(self.prompts.truth[s], r) for s, r in zip(sources, responses)]))
        with open(self.out / METRICS_FILE, "a") as f:
            f.write(json.dumps(record) + "\n")
        self.out_dir.push(METRICS_FILE)
        log.info("iter %d reward %.3f kl %.3f entropy %.3f len %.1f%s tok/s %.0f (%.1fs)", iteration + 1,
                 record["reward_mean"], record["kl"], record["entropy"], record["response_length"],
                 f" true_fit {record['true_fit']:.3f}" if "true_fit" in record else "", record["tokens_per_s"],
                 timing["iteration"])
        if self.report is not None:
            self.report(record)
        return record

    def rows(self, iteration: int) -> list[int]:
        """The prompt rows of an iteration, each samples_per_prompt times in a row: the groups that
        grpo and rloo compare are consecutive responses."""
        batch = self.prompts.batch(iteration, self.cfg.rollout_batch_size)
        return [row for row in batch for _ in range(self.cfg.samples_per_prompt)]

    def evaluate(self, iteration: int, weights) -> dict:
        """Mean learned reward (and hidden true fit) of eval_samples responses to each evaluation prompt,
        with the same seeds every time, so that evaluations differ by the policy alone. Appended to
        eval.jsonl with `iteration` = the updates the policy has had (0 = the SFT policy)."""
        cfg, prompts = self.cfg, self.eval_prompts
        rows = list(range(len(prompts.texts))) * cfg.eval_samples
        rollout = self._collect(self._launch(rows, -1, weights, prompts))  # iteration -1: the evaluation's own seeds
        sources = [prompts.texts[i] for i in rows]
        responses = self._decode(rollout)
        scores = np.asarray(ray.get(self.scorer.score.remote(sources, responses)), dtype=np.float32)
        record = {"iteration": iteration, "reward_mean": float(scores.mean()), "reward_std": float(scores.std()),
                  "response_length": float(rollout.lengths.float().mean()), "eos_rate": float(rollout.eos.float().mean()),
                  "responses": len(rows)}
        if prompts.truth is not None:
            from genrec.girl.true_fit import fit_of_text

            record["true_fit"] = float(np.mean([fit_of_text(prompts.truth[s], r) for s, r in zip(sources, responses)]))
        with open(self.out / EVAL_FILE, "a") as f:
            f.write(json.dumps(record) + "\n")
        self.out_dir.push(EVAL_FILE)
        log.info("eval after %d updates: reward %.3f%s (%d responses)", iteration, record["reward_mean"],
                 f" true_fit {record['true_fit']:.3f}" if "true_fit" in record else "", len(rows))
        return record

    def _decode(self, rollout: Rollout) -> list[str]:
        return self.tokenizer.batch_decode(
            [tok[: int(n)].tolist() for tok, n in zip(rollout.tokens, rollout.lengths)], skip_special_tokens=True)

    def _launch(self, rows: list[int], iteration: int, weights, prompt_set: PromptSet | None = None) -> dict:
        """Start every worker on its share of `rows`; _collect waits for them."""
        cfg = self.cfg
        prompt_set = prompt_set or self.prompts
        shares = np.array_split(np.arange(len(rows)), len(self.workers))
        prompts = [[prompt_set.ids[rows[i]] for i in share] for share in shares]
        seeds = [cfg.seed * 1_000_003 + iteration * 1009 + w for w in range(len(self.workers))]
        refs = {w: self.workers[w].generate.remote(prompts[w], seeds[w], iteration) for w in range(len(self.workers))}
        return dict(refs=refs, prompts=prompts, seeds=seeds, iteration=iteration, weights=weights)

    def _sync(self, weights) -> None:
        """Send `weights` to every rollout worker. One that Ray is restarting (its node died after it
        returned its last share) gets them once it is back, and counts as a restart."""
        refs = [w.set_weights.remote(weights) for w in self.workers]
        for index, ref in enumerate(refs):
            try:
                ray.get(ref)
            except WORKER_ERRORS as e:
                log.warning("rollout worker %d was restarting at the weight sync (%s); waiting for it", index,
                            type(e).__name__)
                self.restarts += 1
                _wait_alive(self.workers[index], weights)

    def _collect(self, pending: dict) -> Rollout:
        """Every worker's share; a share whose worker died is redone once Ray restarted it, with the
        weights the share was launched with."""
        cfg, iteration = self.cfg, pending["iteration"]
        results: list[Rollout | None] = [None] * len(self.workers)
        refs = pending["refs"]
        for attempt in range(cfg.rollout_retries + 1):
            failed = []
            for w, ref in refs.items():
                try:
                    results[w] = ray.get(ref)
                except WORKER_ERRORS as e:
                    failed.append(w)
                    log.warning("rollout worker %d died in iteration %d (%s); retrying its share", w,
                                iteration + 1, type(e).__name__)
            if not failed:
                break
            if attempt == cfg.rollout_retries:
                raise RuntimeError(f"rollout workers {failed} failed {attempt + 1} times in iteration {iteration + 1}")
            self.restarts += len(failed)
            # A restarted actor starts from the SFT weights: send the share's weights first.
            for w in failed:
                _wait_alive(self.workers[w], pending["weights"])
            refs = {w: self.workers[w].generate.remote(pending["prompts"][w], pending["seeds"][w], iteration)
                    for w in failed}
        return merge_rollouts(results, self.tokenizer.pad_token_id)

    def save_checkpoint(self, iteration: int, metrics: dict) -> str:
        """The learner writes (and pushes) out_dir/checkpoints/iter_N; the oldest beyond keep_checkpoints go."""
        name = f"{CHECKPOINTS}/iter_{iteration:06d}"
        ray.get(self.learner.save.remote(self.out_dir.location, name, iteration,
                                         {"restarts": self.restarts, "metrics": metrics}))
        for old in finished_checkpoints(self.out_dir)[: -self.cfg.keep_checkpoints]:
            self.out_dir.delete(old)
        return name

    def cleanup(self) -> None:
        for actor in [*getattr(self, "workers", []), *getattr(self, "learners", []), getattr(self, "reference", None),
                      getattr(self, "scorer", None)]:
            if actor is not None:
                ray.kill(actor)


def _wait_alive(worker, weights, timeout_s: float = 120.0) -> None:
    """Set the weights on a restarting worker, retrying while Ray brings it back."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            ray.get(worker.set_weights.remote(weights))
            return
        except WORKER_ERRORS:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def merge_rollouts(parts: list[Rollout], pad_id: int) -> Rollout:
    width = max(p.tokens.shape[1] for p in parts)

    def pad(t, value):
        return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)

    return Rollout(prompts=[p for part in parts for p in part.prompts],
                   tokens=torch.cat([pad(p.tokens, pad_id) for p in parts]),
                   logp=torch.cat([pad(p.logp, 0.0) for p in parts]),
                   mask=torch.cat([pad(p.mask, 0.0) for p in parts]),
                   eos=torch.cat([p.eos for p in parts]), seconds=max(p.seconds for p in parts))


def finished_checkpoints(out_dir: Mirror) -> list[str]:
    """The checkpoints in out_dir (names relative to it), oldest first; one counts once its state
    file, written and pushed last, is there."""
    return [f"{CHECKPOINTS}/{c}" for c in out_dir.children(CHECKPOINTS) if out_dir.exists(f"{CHECKPOINTS}/{c}/{STATE_FILE}")]


def latest_checkpoint(out_dir: Mirror) -> str | None:
    done = finished_checkpoints(out_dir)
    return done[-1] if done else None


def _truncate_log(path: Path, keep_through: int) -> None:
    """Drop log lines of iterations after the checkpoint (they will be run again)."""
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line)["iteration"] <= keep_through]
    path.write_text("".join(line + "\n" for line in kept))


def run_ppo(cfg: PPOConfig, report: Callable[[dict], None] | None = None) -> dict:
    run = PPORun(cfg, report)
    try:
        run.setup()
        return run.train()
    finally:
        run.cleanup()


def read_metrics(out_dir: str | Path, name: str = METRICS_FILE) -> list[dict]:
    """The records of metrics.jsonl (or eval.jsonl with name=EVAL_FILE)."""
    path = Path(out_dir) / name
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
