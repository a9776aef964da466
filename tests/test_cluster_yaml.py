"""cluster.yaml against Ray's own cluster-config schema; the KubeRay RayJob example parses and fits."""
import copy
import json
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


@pytest.fixture(scope="module")
def cluster():
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_passes_rays_schema_and_launcher_checks(cluster):
    jsonschema.validate(cluster, SCHEMA)  # the file as written
    # What `ray up` does first: fill in the provider's defaults, then validate (schema + cross-checks).
    validate_config(prepare_config(copy.deepcopy(cluster)))


def test_cluster_yaml_has_a_cpu_head_and_an_autoscaling_gpu_group_that_installs_genrec(cluster):
    types = cluster["available_node_types"]
    head = types[cluster["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    gpu_groups = [t for name, t in types.items() if name != cluster["head_node_type"] and t["resources"].get("GPU", 0) >= 1]
    assert len(gpu_groups) == 1
    group = gpu_groups[0]
    assert 0 <= group["min_workers"] <= group["max_workers"] <= cluster["max_workers"]
    assert any("pip install" in c and "genrec" in c for c in cluster["setup_commands"])
    assert cluster["docker"]["image"].startswith("rayproject/ray:")
    # The synced checkout must leave the virtual environment and run outputs behind.
    assert {".venv", "runs"} <= set(cluster["rsync_exclude"])


def test_schema_check_rejects_a_misspelled_node_type_key(cluster):
    broken = copy.deepcopy(cluster)
    group = next(t for t in broken["available_node_types"].values() if "min_workers" in t)
    group["min_worker"] = group.pop("min_workers")
    with pytest.raises(jsonschema.ValidationError, match="min_worker"):
        jsonschema.validate(broken, SCHEMA)


def test_kuberay_rayjob_example_parses_and_runs_the_pipeline():
    job = yaml.safe_load((ROOT / "docs" / "kuberay_rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    script = spec["entrypoint"].split()[1]
    assert (ROOT / script).exists(), script
    config = spec["entrypoint"].split("--config")[1].split()[0]
    assert (ROOT / config).exists(), config
    assert isinstance(yaml.safe_load(spec["runtimeEnvYAML"]), dict)
    cluster = spec["rayClusterSpec"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head["resources"]["limits"]
    (group,) = cluster["workerGroupSpecs"]
    assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    worker = group["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
