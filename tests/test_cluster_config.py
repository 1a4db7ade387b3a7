"""``cluster.yaml`` against Ray's own cluster-config schema, offline, plus what this project needs of it.

``ray up`` would contact AWS; ``prepare_config`` + ``validate_config`` are the same checks it runs
first (defaults merged, then the JSON schema: unknown fields, wrong types).
"""
from __future__ import annotations

import copy
import re
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CONFIG = Path(__file__).resolve().parents[1] / "cluster.yaml"
GPU_FAMILIES = ("g4dn.", "g5.", "g6.", "g6e.", "p3.", "p4d.", "p5.")


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(CONFIG.read_text())


@pytest.fixture(scope="module")
def cfg(raw) -> dict:
    """The config as ``ray up`` sees it: defaults filled in, setup commands merged per node kind."""
    prepared = prepare_config(copy.deepcopy(raw))
    validate_config(prepared)
    return prepared


def _exports(commands: list[str], name: str) -> list[str]:
    """Values given to ``export NAME=...`` in a node kind's commands."""
    return [m.group(1) for c in commands for m in re.finditer(rf"export {name}=([^\s'\"]+)", c)]


def test_passes_rays_schema(cfg):
    assert cfg["provider"]["type"] == "aws" and cfg["provider"]["region"]


def test_schema_check_is_real(raw):
    """The same validation rejects a misspelt field, so passing it means something."""
    bad = copy.deepcopy(raw)
    bad["available_node_types"]["gpu_a10g"]["resourcez"] = {"GPU": 1}
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(bad))


def test_cpu_head_and_autoscaling_gpu_workers(cfg):
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["max_workers"] == 0
    workers = {k: v for k, v in types.items() if k != cfg["head_node_type"]}
    assert workers
    for name, t in workers.items():
        assert t["resources"].get("GPU", 0) >= 1, f"{name} advertises no GPU"
        assert t["node_config"]["InstanceType"].startswith(GPU_FAMILIES), f"{name} is not a GPU instance"
        assert t["min_workers"] == 0 < t["max_workers"], f"{name} does not autoscale from zero"
    assert cfg["max_workers"] >= max(t["max_workers"] for t in workers.values())


def test_head_runs_mlflow_server_and_everyone_points_at_it(cfg):
    server = [c for c in cfg["head_start_ray_commands"] if "mlflow server" in c]
    assert len(server) == 1
    cmd = server[0]
    assert "--host 0.0.0.0" in cmd and "--port 5000" in cmd and "--backend-store-uri sqlite:///" in cmd
    assert cmd.index("mlflow server") > 0 and any("ray start --head" in c for c in cfg["head_start_ray_commands"])
    # Workers reach the head by its address; the head exports its private IP, not localhost,
    # because the driver hands its URI to the rank-0 Train worker on a GPU node.
    assert _exports(cfg["worker_setup_commands"], "MLFLOW_TRACKING_URI") == ["http://$RAY_HEAD_IP:5000"]
    head_uri = _exports(cfg["head_setup_commands"], "MLFLOW_TRACKING_URI")
    assert len(head_uri) == 1 and head_uri[0].endswith(":5000")
    assert "127.0.0.1" not in head_uri[0] and "localhost" not in head_uri[0]


def test_storage_is_shared_on_every_node(cfg):
    """FSIG_STORAGE (Ray Train/Tune storage) must be a cloud URI or on a file system every node mounts."""
    for kind in ("head_setup_commands", "worker_setup_commands"):
        values = _exports(cfg[kind], "FSIG_STORAGE")
        assert len(values) == 1, f"{kind} must export FSIG_STORAGE once"
        path = values[0]
        if path.startswith(("s3://", "gs://")):
            continue
        assert path.startswith("/") and not path.startswith(("/tmp", "/home", "/root", "/var")), path
        mounts = [m.group(1) for c in cfg[kind]
                  for m in re.finditer(r"mount -t (?:nfs4?|efs|lustre)\b.*?\s(/[^\s)]+)", c)]
        assert any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounts), \
            f"{kind}: {path} is not under a shared mount ({mounts})"


def test_code_and_ray_version_match_the_client(cfg):
    """The working dir is mounted where setup installs it, and Ray is pinned to the version that runs ray up."""
    mounts = cfg["file_mounts"]
    assert list(mounts.values()) == ["."]
    remote = next(iter(mounts))
    installs = [c for c in cfg["worker_setup_commands"] if "pip install" in c and " -e " in c]
    assert installs and remote.replace("/home/ubuntu", "~") in installs[0]
    pins = re.findall(r"ray\[[^\]]*\]==([\w.]+)", " ".join(cfg["head_setup_commands"]))
    assert pins == [ray.__version__], f"pin Ray to {ray.__version__} in cluster.yaml (nodes must match the client)"
