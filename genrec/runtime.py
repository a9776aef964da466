"""Starting or joining Ray, the same way for every stage."""
from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path

import ray

from genrec.config_loader import absolute_input_paths

# Ray Train's controller polls its workers this often (Ray's default: 2 s), and a run ends only at
# the poll after its workers finish: on a laptop that is seconds of every short run. A local
# session polls its few workers more often; a cluster keeps whatever its environment says.
LOCAL_RAY_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25"}


def start_local_ray(**kwargs) -> None:
    """ray.init on this machine: LOCAL_RAY_ENV unless the environment sets those already (the workers
    Ray starts inherit the driver's environment), and a dashboard on a free port that the workers ask.

    Why: every TorchTrainer.fit starts Ray Train's PlacementGroupCleaner, a detached actor that removes
    the run's placement group once its controller is dead. When Tune stops a trial (ASHA), the trial's
    controller dies with it and nothing else removes that group before the driver exits. The cleaner
    asks the state API (the dashboard, over HTTP) whether the controller lives, at an auto-detected
    address; without a dashboard that is 127.0.0.1:8265 all the same, where nothing answers (the group
    is never removed) or another Ray on this machine answers that it knows no such actor (the cleaner
    removes a live run's group and its workers die: "placement group was removed"). The state API
    reads RAY_API_SERVER_ADDRESS before any auto-detection; it goes to the workers through the job's
    runtime_env, not this process's environment, where it would also redirect `ray job submit`."""
    for key, value in LOCAL_RAY_ENV.items():
        os.environ.setdefault(key, value)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    runtime_env = dict(kwargs.pop("runtime_env", None) or {})
    runtime_env["env_vars"] = {**runtime_env.get("env_vars", {}), "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}
    ray.init(include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=port, runtime_env=runtime_env, **kwargs)


def init_ray(object_store_gb: float = 0.0) -> None:
    """Join the cluster a job was submitted to (RAY_ADDRESS), else start a local Ray.

    Stages call this instead of ray.init so that `genrec <verb>` works on a laptop and under
    `ray job submit` alike, and so tests that already started Ray keep their session.
    """
    if ray.is_initialized():
        return
    kwargs: dict = {"configure_logging": False}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], **kwargs)
    else:
        if object_store_gb > 0:
            kwargs["object_store_memory"] = int(object_store_gb * 1024**3)
        start_local_ray(**kwargs)
    quiet_ray_data()


def worker_resources(workers) -> dict:
    """What each Ray Train worker of a stage reserves (`workers`: its config.RayTrain section):
    cpus_per_worker CPUs, plus a GPU
    with use_gpu. Ray sets a worker's OMP_NUM_THREADS, and so torch's thread count, to its CPUs:
    with Ray's default of one CPU a worker trains on one core however many its node has."""
    return {"CPU": workers.cpus_per_worker, **({"GPU": 1} if workers.use_gpu else {})}


def for_train_workers(cfg):
    """`cfg` with its input paths (config.absolute_input_paths) and an existing out_dir made absolute:
    Ray Train starts every worker in a folder of its own (the run's artifacts folder), where a
    relative `data_dir` names nothing."""
    values = dataclasses.asdict(cfg)
    absolute = absolute_input_paths(type(cfg), values)
    if Path(cfg.out_dir).exists():
        absolute["out_dir"] = str(Path(cfg.out_dir).resolve())
    return dataclasses.replace(cfg, **absolute)


def quiet_ray_data() -> None:
    """Ray Data's progress bars fight with our own log lines when output is not a terminal."""
    import ray.data

    if not os.isatty(2):
        ray.data.DataContext.get_current().enable_progress_bars = False
