"""``python -m orchestrator sweep METHOD``: Ray Tune + OptunaSearch + ASHA over Ray Train trials (issue #4)."""
from __future__ import annotations

import argparse
from typing import Any

from orchestrator.errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("method", nargs="?")


def run(args: argparse.Namespace, uri: str) -> dict[str, Any]:
    raise UserError("sweep is not built yet (issue #4): use python -m orchestrator train METHOD")
