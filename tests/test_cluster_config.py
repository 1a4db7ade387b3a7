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
    assert "--workers 1" in cmd  # MLflow's 4 uvicorn workers die in a health-check loop on a busy head
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


# ---------------------------------------------------------------- cluster-onprem.yaml (Ray's local provider)
# Launched for real on two emulated hosts by scripts/cluster_smoke.sh (root only, minutes); here the
# same offline checks as for cluster.yaml, plus what that launch showed Ray 2.60 needs.

ONPREM = CONFIG.parent / "cluster-onprem.yaml"


@pytest.fixture(scope="module")
def onprem_raw() -> dict:
    return yaml.safe_load(ONPREM.read_text())


@pytest.fixture(scope="module")
def onprem(onprem_raw) -> dict:
    prepared = prepare_config(copy.deepcopy(onprem_raw))
    validate_config(prepared)
    return prepared


def test_onprem_passes_rays_schema(onprem_raw, onprem):
    assert onprem["provider"]["type"] == "local"
    assert onprem_raw["provider"]["head_ip"] and onprem_raw["provider"]["worker_ips"]
    assert onprem_raw["auth"]["ssh_user"] and onprem_raw["auth"]["ssh_private_key"]
    # The local provider makes one node type of the listed IPs; every worker IP is kept up.
    node_type = onprem["available_node_types"][onprem["head_node_type"]]
    n = len(onprem_raw["provider"]["worker_ips"])
    assert node_type["min_workers"] == node_type["max_workers"] == n


def test_onprem_schema_check_is_real(onprem_raw):
    bad = copy.deepcopy(onprem_raw)
    bad["provider"]["worker_ips"] = "192.168.1.11"  # a string, not a list
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(bad))
    bad = copy.deepcopy(onprem_raw)
    bad["auth"]["ssh_usr"] = "ubuntu"
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(bad))


def test_onprem_has_no_node_types(onprem_raw):
    """Ray refuses available_node_types / head_node_type for on-prem clusters (it makes its own)."""
    assert not {"available_node_types", "head_node_type", "head_node", "worker_nodes"} & set(onprem_raw)


def test_onprem_start_commands_use_token_auth_and_autoscaler_v1(onprem):
    head = [c for c in onprem["head_start_ray_commands"] if "ray start" in c]
    workers = [c for c in onprem["worker_start_ray_commands"] if "ray start" in c]
    assert len(head) == 1 and len(workers) == 1
    assert "RAY_AUTH_MODE=token" in head[0] and "RAY_AUTH_MODE=token" in workers[0]
    # Ray 2.60's autoscaler v2 never started the local provider's workers.
    assert "RAY_enable_autoscaler_v2=0" in head[0] and "--autoscaling-config=~/ray_bootstrap_config.yaml" in head[0]
    assert "--address=$RAY_HEAD_IP:6379" in workers[0]
    # Ray's fixed 30 s registration deadline is missed on a busy node: each start is retried.
    assert all("for try in 1 2 3" in c and "ray stop --force" in c for c in (head[0], workers[0]))
    # ray status / job submit / drivers on the nodes need the mode too: exported in ~/.bashrc.
    assert _exports(onprem["setup_commands"], "RAY_AUTH_MODE") == ["token"]
    # Every node gets the client's token file (the one `ray get-auth-token --generate` wrote).
    assert onprem["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"


def test_onprem_same_setup_as_cluster_yaml(cfg, onprem):
    """Code by file_mounts, the same venv/install/Ray pin and ~/.bashrc exports as the AWS config."""
    assert onprem["file_mounts"]["~/fewshot-orchestrator"] == "." and onprem["rsync_filter"] == [".gitignore"]
    installs = [c for c in onprem["setup_commands"] if "pip install" in c and " -e " in c]
    assert installs and "~/fewshot-orchestrator" in installs[0]
    pins = re.findall(r"ray\[[^\]]*\]==([\w.]+)", " ".join(onprem["setup_commands"]))
    assert pins == [ray.__version__]
    venv = [c for c in onprem["setup_commands"] if "uv venv" in c]
    assert venv and venv == [c for c in cfg["setup_commands"] if "uv venv" in c]
    for kind in ("head_setup_commands", "worker_setup_commands"):
        assert _exports(onprem[kind], "MLFLOW_TRACKING_URI") == _exports(cfg[kind], "MLFLOW_TRACKING_URI")


def test_onprem_head_runs_mlflow_server_on_shared_storage(onprem):
    server = [c for c in onprem["head_start_ray_commands"] if "mlflow server" in c]
    assert len(server) == 1 and "--port 5000" in server[0] and "--workers 1" in server[0]
    assert "--backend-store-uri sqlite:////mnt/shared/" in server[0]
    assert "--artifacts-destination /mnt/shared/" in server[0]
    storage = _exports(onprem["setup_commands"], "FSIG_STORAGE")
    assert len(storage) == 1 and storage[0].startswith("/mnt/shared/")


def test_onprem_smoke_copy_is_launchable(onprem_raw, tmp_path):
    """scripts/cluster_smoke.sh launches a copy with its hosts, key and shared folder: it must pass the
    same checks, and differ from cluster-onprem.yaml only where the emulated hosts need it."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("onprem_smoke_config",
                                                  CONFIG.parent / "scripts" / "onprem_smoke_config.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    shared = str(tmp_path / "shared")
    smoke = mod.concrete(onprem_raw, head_ip="10.77.0.1", worker_ips=["10.77.0.2"], key="/k/id_ed25519",
                         shared=shared, cluster_name="fsig-smoke-1", repo="/repo", token="/c/.ray/auth_token")
    prepared = prepare_config(copy.deepcopy(smoke))
    validate_config(prepared)
    assert prepared["provider"] == {"type": "local", "head_ip": "10.77.0.1", "worker_ips": ["10.77.0.2"]}
    assert smoke["file_mounts"] == {"~/fewshot-orchestrator": "/repo", "~/.ray/auth_token": "/c/.ray/auth_token"}
    text = yaml.safe_dump(smoke)
    assert "/mnt/shared" not in text and not re.search(r"(?:^|[\s/])uv\s", text)  # offline: no uv left
    for key in ("head_start_ray_commands", "worker_start_ray_commands", "head_setup_commands",
                "worker_setup_commands"):
        assert smoke[key] == [c.replace("/mnt/shared", shared) for c in onprem_raw[key]]
