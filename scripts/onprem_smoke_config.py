"""The concrete copy of ``cluster-onprem.yaml`` that ``scripts/cluster_smoke.sh`` launches.

``python scripts/onprem_smoke_config.py --head-ip IP --worker-ip IP --key FILE --shared DIR
--cluster-name NAME --repo DIR --token FILE > cluster.yaml``

Only what the emulated hosts need differs from the file a lab uses:

- ``provider.head_ip`` / ``worker_ips``, ``auth`` (root and the key the script generated), ``cluster_name``;
- ``/mnt/shared`` (the lab's shared file system) becomes ``--shared``, a folder every emulated host
  sees because the namespaces share this machine's file system;
- the three ``uv`` lines (download uv, create the venv, install the project with Ray from PyPI) become
  a check that ``~/venv`` (which the script links to this checkout's venv) has the client's Ray: this
  machine is offline, and the hosts share its venv the way they share the code;
- ``file_mounts`` sources are absolute (the repository, the client's token file), so the copy works
  from any directory.

Every other command (the ``~/.bashrc`` exports, ``ray start`` with token auth and autoscaler v1, the
MLflow server) runs as written.
"""
from __future__ import annotations

import argparse
import copy
import re
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "cluster-onprem.yaml"
SHARED_PLACEHOLDER = "/mnt/shared"
COMMAND_KEYS = ("setup_commands", "head_setup_commands", "worker_setup_commands",
                "head_start_ray_commands", "worker_start_ray_commands", "initialization_commands")


def _venv_check(ray_version: str) -> str:
    return (f"~/venv/bin/python -c \"import ray, sys; v = ray.__version__; "
            f"sys.exit(0 if v == '{ray_version}' else 'node has Ray ' + v + ', client {ray_version}')\"")


def concrete(raw: dict[str, Any], *, head_ip: str, worker_ips: list[str], key: str, shared: str,
             cluster_name: str, repo: str, token: str, ssh_user: str = "root",
             ray_version: str | None = None) -> dict[str, Any]:
    """``raw`` (the parsed cluster-onprem.yaml) made launchable on the emulated hosts."""
    if ray_version is None:
        import ray

        ray_version = ray.__version__
    cfg = copy.deepcopy(raw)
    cfg["cluster_name"] = cluster_name
    cfg["provider"] = {**cfg["provider"], "head_ip": head_ip, "worker_ips": list(worker_ips)}
    cfg["auth"] = {**cfg.get("auth", {}), "ssh_user": ssh_user, "ssh_private_key": key}
    replaced = 0
    for name in COMMAND_KEYS:
        commands = []
        for cmd in cfg.get(name, []) or []:
            if re.search(r"(?:^|[\s/])uv\s", cmd):
                replaced += 1
                if "uv pip install" in cmd:
                    commands.append(_venv_check(ray_version))
                continue
            commands.append(cmd.replace(SHARED_PLACEHOLDER, shared.rstrip("/")))
        if name in cfg:
            cfg[name] = commands
    if replaced != 3:
        raise SystemExit(f"expected the 3 uv lines in {SOURCE.name}'s setup_commands, replaced {replaced}: "
                         f"update scripts/onprem_smoke_config.py to match the file")
    mounts = {}
    for remote, local in cfg.get("file_mounts", {}).items():
        if local == ".":
            local = repo
        elif local.endswith("auth_token"):
            local = token
        mounts[remote] = local
    cfg["file_mounts"] = mounts
    return cfg


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--head-ip", required=True)
    ap.add_argument("--worker-ip", action="append", required=True)
    ap.add_argument("--key", required=True, help="SSH private key for root on the hosts")
    ap.add_argument("--shared", required=True, help="folder standing in for /mnt/shared")
    ap.add_argument("--cluster-name", required=True)
    ap.add_argument("--repo", default=str(REPO))
    ap.add_argument("--token", required=True, help="the client's Ray auth token file")
    ap.add_argument("--source", default=str(SOURCE))
    args = ap.parse_args(argv)
    raw = yaml.safe_load(Path(args.source).read_text())
    cfg = concrete(raw, head_ip=args.head_ip, worker_ips=args.worker_ip, key=args.key, shared=args.shared,
                   cluster_name=args.cluster_name, repo=args.repo, token=args.token)
    yaml.safe_dump(cfg, sys.stdout, sort_keys=False, width=100000)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
