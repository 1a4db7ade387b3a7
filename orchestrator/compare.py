"""``python -m orchestrator compare``: best trial per method and dataset from MLflow (issue #4)."""
from __future__ import annotations

import argparse
from typing import Any

from orchestrator.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--experiment", default=None)


def run(args: argparse.Namespace, uri: str) -> dict[str, Any]:
    raise UserError("compare is not built yet (issue #4): open the MLflow UI (mlflow ui --backend-store-uri ...)")
