"""Which node each Ray Train worker of each job ran on, from Ray's State API and from the MLflow runs.

Run on a cluster node (``scripts/cluster_smoke.sh`` runs it on the head with ``ray exec``)::

    python scripts/cluster_nodes.py --tracking-uri http://HEAD:5000 \\
        --job JOB_ID:sweep:2 --job JOB_ID:train:2

``--job ID:KIND:N`` names a ``ray job submit`` submission and what it must show:

- ``sweep:N``: N trials (worker groups), whose workers together used at least 2 nodes;
- ``train:N``: one worker group of N workers on N different nodes.

For every worker group (one per trial or train run: a placement group of ``RayTrainWorker`` actors)
it prints the nodes of its workers; for every MLflow run of the experiment, the node tags the harness
records (``worker_nodes``, ``node_ip``; "not recorded" where a run has none). Exit status 1 if a
job's placement does not show what it must, 2 if the State API cannot be read.
"""
from __future__ import annotations

import argparse
import collections
import sys

NODE_TAGS = ("worker_nodes", "node_ip", "driver_node", "controller_node")


def _worker_groups(job_id: str, actors, node_ip) -> dict[str, list[tuple[str, str]]]:
    groups: dict[str, list[tuple[str, str]]] = collections.defaultdict(list)
    for a in actors:
        if a.job_id == job_id and a.class_name == "RayTrainWorker":
            groups[a.placement_group_id or a.actor_id].append((node_ip.get(a.node_id, a.node_id or "?"), a.state))
    return groups


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--job", action="append", default=[], metavar="JOB_ID:KIND:N")
    ap.add_argument("--tracking-uri", help="MLflow server whose runs to list")
    ap.add_argument("--experiment", default=None, help="MLflow experiment (default: every experiment)")
    ap.add_argument("--address", default="auto")
    args = ap.parse_args(argv)

    from ray.util.state import list_actors, list_jobs, list_nodes

    try:
        nodes = list_nodes(address=args.address, limit=1000, detail=True)
        actors = list_actors(address=args.address, limit=10000, detail=True,
                             filters=[("class_name", "=", "RayTrainWorker")])
        jobs = list_jobs(address=args.address, limit=1000)
    except Exception as err:  # noqa: BLE001 - report and stop
        print(f"cannot read Ray's State API at {args.address}: {err}", file=sys.stderr)
        return 2
    node_ip = {n.node_id: n.node_ip for n in nodes}
    print("nodes: " + ", ".join(f"{n.node_ip} ({'head' if n.is_head_node else 'worker'}, {n.state}, "
                                f"{n.node_name})" for n in nodes))
    by_submission = {j.submission_id: j for j in jobs if j.submission_id}
    failures = []
    for spec in args.job:
        sid, kind, n = spec.rsplit(":", 2)
        n = int(n)
        job = by_submission.get(sid)
        if job is None:
            failures.append(f"{sid}: no such job")
            continue
        groups = _worker_groups(job.job_id, actors, node_ip)
        print(f"job {sid} ({kind}, Ray job {job.job_id}, {job.status}): {len(groups)} worker group(s)")
        for i, (pg, workers) in enumerate(sorted(groups.items()), 1):
            label = "trial" if kind == "sweep" else "train run"
            print(f"  {label} worker group {i} (placement group {pg[:12]}): "
                  + ", ".join(f"worker on {ip}" for ip, _ in workers))
        used = {ip for ws in groups.values() for ip, _ in ws}
        if kind == "sweep":
            if len(groups) < n:
                failures.append(f"{sid}: {len(groups)} worker group(s), expected {n} trials")
            if len(used) < 2:
                failures.append(f"{sid}: the trials' workers all ran on {sorted(used)}")
        elif kind == "train":
            if not any(len(ws) == n and len({ip for ip, _ in ws}) == n for ws in groups.values()):
                failures.append(f"{sid}: no worker group of {n} workers on {n} different nodes "
                                f"({[sorted(ip for ip, _ in ws) for ws in groups.values()]})")
        else:
            failures.append(f"{spec}: KIND must be sweep or train")

    if args.tracking_uri:
        from mlflow.entities import ViewType
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=args.tracking_uri)
        exps = client.search_experiments(view_type=ViewType.ACTIVE_ONLY)
        if args.experiment:
            exps = [e for e in exps if e.name == args.experiment]
        runs = client.search_runs([e.experiment_id for e in exps], max_results=1000,
                                  order_by=["attributes.start_time ASC"]) if exps else []
        print(f"MLflow runs at {args.tracking_uri}: {len(runs)}")
        for r in runs:
            t = r.data.tags
            role = ("sweep parent" if t.get("sweep_role") == "parent"
                    else "trial" if t.get("mlflow.parentRunId") else "run")
            nodes_txt = "; ".join(f"{k}={t[k]}" for k in NODE_TAGS if t.get(k)) or "node not recorded"
            print(f"  {role:12s} {t.get('mlflow.runName', r.info.run_id)} [{r.info.status}] {nodes_txt}")
    for f in failures:
        print(f"PLACEMENT CHECK FAILED: {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
