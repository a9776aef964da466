"""Shared fixtures: one local Ray session for the whole test run (it takes ~5 s to start)."""
import os
import time
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from genrec.runtime import start_local_ray

    if not ray.is_initialized():
        start_local_ray(num_cpus=2, log_to_driver=False, configure_logging=False)
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_server():
    """An S3-compatible server (moto) on 127.0.0.1 with one bucket, `genrec`; yields the environment a
    client needs to reach it (AWS_ENDPOINT_URL and test credentials)."""
    from ray_nodes import create_bucket, start_s3_server

    server, env = start_s3_server()
    try:
        create_bucket(env, "genrec")
        yield env
    finally:
        server.terminate()
        server.wait(timeout=10)


def live_placement_groups() -> dict:
    import ray

    return {pg_id: (pg["state"], pg["bundles"]) for pg_id, pg in ray.util.placement_group_table().items()
            if pg["state"] != "REMOVED"}


@pytest.fixture(autouse=True)
def no_placement_group_outlives_its_test(request):
    """A Ray test leaves no placement group behind (a Tune trial's, a Ray Train run's): one that did
    would hold its CPUs and make every later test wait for them. After a bounded wait (a stopped
    Ray Train run's group goes a second or so after its controller) the test errors at teardown,
    naming the groups, and they are removed so that the rest of the suite runs."""
    if "ray_session" not in request.fixturenames:
        yield
        return
    import ray
    from ray.util.placement_group import PlacementGroup

    request.getfixturevalue("ray_session")  # autouse fixtures come first: Ray must be up to ask it
    before = set(live_placement_groups())
    yield
    deadline = time.monotonic() + 30
    while (left := {k: v for k, v in live_placement_groups().items() if k not in before}) and time.monotonic() < deadline:
        time.sleep(0.25)
    for pg_id in left:
        ray.util.remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(pg_id))))
    if left:
        pytest.fail(f"{request.node.nodeid} left these placement groups (now removed): {left}")


def wait_until_cluster_idle(timeout_s: float = 60.0) -> None:
    """Waits until every CPU of the session is free again and no placement group is left (a Tune
    trial's, a Ray Train run's); after timeout_s fails with what is still held. A Ray Train run's
    placement group is removed by its controller, or, when the controller is killed (Tune stopping
    its trial), by Ray Train's placement-group cleaner a second or so later: hence a bounded wait."""
    import ray

    deadline = time.monotonic() + timeout_s
    while True:
        held = {pg_id: (pg["state"], pg["bundles"]) for pg_id, pg in ray.util.placement_group_table().items()
                if pg["state"] != "REMOVED"}
        free, total = ray.available_resources().get("CPU", 0.0), ray.cluster_resources().get("CPU", 0.0)
        if not held and free == total:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"after {timeout_s:.0f} s the cluster still holds {total - free} of its {total} CPUs "
                                 f"and these placement groups: {held}")
        time.sleep(0.25)  # poll interval: the wait itself is on the condition above


def pytest_collection_modifyitems(config, items):
    """Tiers: a test that uses the shared Ray session (itself or through a fixture) is marked `ray`,
    so `make test-fast` (`-m "not ray and not slow"`) runs the rest; a `gpu` test is skipped
    without CUDA and runs wherever a GPU is at hand."""
    import torch

    no_gpu = None if torch.cuda.is_available() else pytest.mark.skip(reason="needs CUDA (none on this machine)")
    for item in items:
        if "ray_session" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.ray)
        if no_gpu is not None and "gpu" in item.keywords:
            item.add_marker(no_gpu)


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data, or a skip with the reason when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (real data sets live in ../shared/data beside the checkout)")
    return path


def synth_and_prepare(root: Path, num_users: int, num_items: int, history_len: int, **prepare_args) -> dict:
    """Synthetic interactions in root/synth, prepared into root/prepared (Ray must be running).
    Returns the synth summary (paths of the interactions and catalog files)."""
    from genrec.config import PrepareConfig, SourceConfig, SynthInteractionsConfig
    from genrec.data.prepare import prepare
    from genrec.data.synth import synth_interactions

    synth = synth_interactions(SynthInteractionsConfig(out_dir=str(root / "synth"), num_users=num_users,
                                                       num_items=num_items))
    prepare(PrepareConfig(
        source=SourceConfig(format="table", path=synth["interactions_path"], catalog_path=synth["catalog_path"]),
        out_dir=str(root / "prepared"), history_len=history_len, **prepare_args,
    ))
    return synth
