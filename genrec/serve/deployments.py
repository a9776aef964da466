"""Ray Serve deployments: Recommender, JobGenerator and JobMatcher behind the GenrecAPI ingress.

Each model deployment loads its model once per replica (in __init__) and groups concurrent requests
into one model call with a `Batcher` (genrec/serve/batching.py: the next batch forms when the model is
free); the batch size and wait come from the config through Serve's `user_config`, so `reconfigure`
also applies them when a Serve config file changes them on a running app. The model call runs in a
worker thread, so the replica keeps accepting (and batching) requests while the model computes.

`build_app` is the application builder for `serve run genrec.serve.deployments:build_app
config=configs/serve.yaml` and for Serve config files (configs/serve_run.yaml); `genrec serve` calls
`build_application` with its parsed ServeConfig.
"""
from __future__ import annotations

import asyncio
from typing import Any

from ray import serve

from genrec.config import DeploymentSettings, ServeConfig

from genrec.config_loader import load_config
from genrec.serve.api import Backends, HandleBackend, create_api
from genrec.serve.batching import Batcher


class BatchedModel:
    """Shared by the model deployments: a Batcher per batched model call (genrec/serve/batching.py),
    its settings from user_config, a ping for /healthz."""

    batchers: list[Batcher]

    def reconfigure(self, user_config: dict) -> None:
        for batcher in self.batchers:
            batcher.configure(int(user_config["max_batch_size"]), float(user_config["batch_wait_timeout_s"]))

    def ping(self) -> bool:
        return True

    def info(self) -> dict:
        # the batches formed and the requests in them: /v1/models shows whether batching happens
        return dict(self.model.info(), batching=self.batchers[0].stats())


@serve.deployment
class Recommender(BatchedModel):
    def __init__(self, cfg) -> None:
        from genrec.serve.recommender import RecommenderModel

        self.model = RecommenderModel(cfg)
        self.rank = Batcher(self.model.rank, cfg.max_batch_size, cfg.batch_wait_timeout_s)
        self.batchers = [self.rank]

    async def recommend(self, history: list, k: int, exclude_history: bool) -> dict:
        checked = self.model.check(history, k, exclude_history)
        if not hasattr(checked, "history"):  # a Rejection: answered without touching the model
            return checked.as_dict()
        return await self.rank(checked)


@serve.deployment
class JobGenerator(BatchedModel):
    def __init__(self, cfg) -> None:
        from genrec.serve.girl import JobGeneratorModel

        self.model = JobGeneratorModel(cfg)
        self.batchers = [Batcher(self.model.generate, cfg.max_batch_size, cfg.batch_wait_timeout_s)]

    async def generate(self, cv: str, max_new_tokens: int, temperature: float) -> str:
        return await self.batchers[0]((cv, max_new_tokens, temperature))


@serve.deployment
class JobMatcher(BatchedModel):
    def __init__(self, cfg) -> None:
        from genrec.serve.girl import JobMatcherModel

        self.model = JobMatcherModel(cfg)
        self.batchers = [Batcher(self.model.score, cfg.max_batch_size, cfg.batch_wait_timeout_s)]

    async def score(self, cv: str, jd: str) -> float:
        return await self.batchers[0]((cv, jd))

    async def recommend(self, cv: str, k: int) -> list[dict]:
        # JobRecommender ranks one CV per call (generate -> retrieve -> rerank): no batch to form.
        return await asyncio.to_thread(self.model.recommend, cv, k)


@serve.deployment
@serve.ingress()
class GenrecAPI:
    """The FastAPI ingress; its app is built on the replica (see genrec/serve/api.py)."""

    def __init__(self, cfg: ServeConfig, recommender=None, generator=None, matcher=None) -> None:
        self.cfg = cfg
        self.backends = Backends(*(HandleBackend(h) if h is not None else None
                                   for h in (recommender, generator, matcher)))

    def __serve_build_asgi_app__(self):
        return create_api(self.cfg, self.backends)


def deployment_options(settings: DeploymentSettings) -> dict[str, Any]:
    """Serve options of a model deployment: replicas or autoscaling, limits, resources, batching."""
    options: dict[str, Any] = {
        "max_ongoing_requests": settings.max_ongoing_requests,
        "ray_actor_options": {"num_cpus": settings.num_cpus, "num_gpus": 1 if settings.use_gpu else 0},
        "user_config": {"max_batch_size": settings.max_batch_size,
                        "batch_wait_timeout_s": settings.batch_wait_timeout_s},
    }
    if settings.max_replicas > settings.min_replicas:
        options["autoscaling_config"] = {"min_replicas": settings.min_replicas, "max_replicas": settings.max_replicas,
                                         "target_ongoing_requests": settings.target_ongoing_requests}
    else:
        options["num_replicas"] = settings.min_replicas
    return options


def build_application(cfg: ServeConfig):
    """The Serve application: the ingress bound to the model deployments the config turns on."""
    recommender = generator = matcher = None
    if cfg.recommender.checkpoint_dir:
        recommender = Recommender.options(**deployment_options(cfg.recommender)).bind(cfg.recommender)
    if cfg.generator.checkpoint_dir:
        generator = JobGenerator.options(**deployment_options(cfg.generator)).bind(cfg.generator)
    if cfg.matcher.reward_dir:
        matcher = JobMatcher.options(**deployment_options(cfg.matcher)).bind(cfg.matcher)
    if recommender is None and generator is None and matcher is None:
        raise ValueError("nothing to serve: set recommender.checkpoint_dir, generator.checkpoint_dir "
                         "or matcher.reward_dir")
    ingress = GenrecAPI.options(max_ongoing_requests=cfg.ingress_max_ongoing_requests,
                                ray_actor_options={"num_cpus": 0})
    return ingress.bind(cfg, recommender, generator, matcher)


def build_app(args: dict[str, Any]):
    """Application builder for `serve run` and Serve config files: `config` names a genrec serve
    YAML; every other argument is a `key=value` override of it (dotted keys for sections)."""
    args = dict(args)
    path = args.pop("config", None)
    cfg = load_config(ServeConfig, path, [f"{key}={value}" for key, value in args.items()])
    return build_application(cfg)
