"""End to end on a real local Ray and a real MLflow SQLite store: train, resume, evaluate, generate.

The data-parallel claim is checked literally: 2 workers with 1 task each must produce the
same parameters as 1 worker with 2 tasks, and a run resumed from its step-2 checkpoint
must end where the uninterrupted run ends.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from orchestrator import pipeline, tracking
from orchestrator.cli import _dispatch, main, parser

# Small but real: FIGR's DCGAN net at width 8 on the bundled digits.
FAST = ["--set", "width=8", "--set", "val_generate=72", "--set", "n_generate=40",
        "--set", "eval_every=2", "--set", "select_metric=last", "--set", "inner_steps=3", "--set", "adapt_steps=3"]


@pytest.fixture(scope="module")
def store(tmp_path_factory, ray_local):
    root = tmp_path_factory.mktemp("mlflow")
    return f"sqlite:///{root / 'mlflow.db'}"


def train(uri: str, *extra: str) -> dict:
    """The CLI's own parsing and dispatch (the --json printing is covered by evaluate/generate below)."""
    return _dispatch(parser().parse_args(["train", "figr", "--tracking-uri", uri, *FAST, *extra]))


def state_of(uri: str, run_id: str) -> dict[str, torch.Tensor]:
    _, _, _, saved = pipeline.load_run(uri, run_id)
    return saved


@pytest.fixture(scope="module")
def one_worker(store):
    return train(store, "--steps", "4", "--set", "tasks_per_worker=2")


def assert_same_state(a: dict, b: dict, atol: float = 1e-5) -> None:
    flat_a, flat_b = _flatten(a), _flatten(b)
    assert flat_a.keys() == flat_b.keys()
    for k in flat_a:
        assert torch.allclose(flat_a[k], flat_b[k], atol=atol), f"{k} differs"


def _flatten(state, prefix="") -> dict[str, torch.Tensor]:
    out = {}
    if isinstance(state, dict):
        for k, v in state.items():
            out.update(_flatten(v, f"{prefix}{k}."))
    elif isinstance(state, (list, tuple)):
        for i, v in enumerate(state):
            out.update(_flatten(v, f"{prefix}{i}."))
    elif isinstance(state, torch.Tensor):
        out[prefix] = state.float()
    return out


def test_train_records_everything_in_mlflow(store, one_worker):
    run = tracking.get_run(store, one_worker["run_id"])
    assert run.info.status == "FINISHED"
    params, tags = run.data.params, run.data.tags
    assert params["inner_lr"] == "0.001" and params["dataset"] == "digits" and params["steps"] == "4"
    assert tags["git_commit"] and tags["version.torch"] == torch.__version__ and tags["split_seed"] == "0"
    metrics = run.data.metrics
    for key in ("fid_domain", "fid_domain_unadapted", "fid_domain_scratch", "fid_domain_shots", "kid_domain",
                "class_hit", "class_hit_scratch", "val_fid_domain", "d_loss", "g_loss", "mse", "ssim"):
        assert key in metrics and np.isfinite(metrics[key]), key
    assert one_worker["fid_domain"] == pytest.approx(metrics["fid_domain"])
    history = tracking.client(store).get_metric_history(run.info.run_id, "d_loss")
    assert [m.step for m in history] == [1, 2, 3, 4]
    arts = {a.path for a in tracking.client(store).list_artifacts(run.info.run_id)}
    assert {"split.json", "config.json", "checkpoint", "samples"} <= arts
    samples = {a.path for a in tracking.client(store).list_artifacts(run.info.run_id, "samples")}
    assert "samples/novel_samples.png" in samples and "samples/val_samples_step000002.png" in samples
    split = tracking.load_json_artifact(store, run.info.run_id, "split.json")
    assert set(split["novel"]).isdisjoint(split["base"]) and len(split["novel"]) == 2


def test_two_workers_match_one_worker_with_twice_the_tasks(store, one_worker):
    two = train(store, "--steps", "4", "--workers", "2", "--set", "tasks_per_worker=1")
    a, b = state_of(store, one_worker["run_id"]), state_of(store, two["run_id"])
    assert a["step"] == b["step"] == 4
    # One meta-step agrees to 1e-11; Adam's normalisation grows that rounding to at most 7e-5 by step 4 on this
    # machine (the same figure on the code before the lifecycle change), so the bound is 2e-4, not 1e-5.
    assert_same_state(a["state"], b["state"], atol=2e-4)


def test_resume_continues_from_checkpoint(store, capsys, one_worker):
    first = train(store, "--steps", "2", "--set", "tasks_per_worker=2")
    assert state_of(store, first["run_id"])["step"] == 2
    code = main(["train", "--resume", first["run_id"], "--steps", "4", "--tracking-uri", store, "--json"])
    assert code == 0 and json.loads(capsys.readouterr().out.strip().splitlines()[-1])["run_id"] == first["run_id"]
    # steps 3 and 4 were trained after the resume; 1 and 2 were not trained again
    history = tracking.client(store).get_metric_history(first["run_id"], "d_loss")
    assert sorted(m.step for m in history) == [1, 2, 3, 4]
    resumed = state_of(store, first["run_id"])
    assert resumed["step"] == 4
    assert_same_state(resumed["state"], state_of(store, one_worker["run_id"])["state"])


def test_evaluate_is_a_seeded_child_run(store, capsys, one_worker):
    code = main(["evaluate", one_worker["run_id"], "--eval-seed", "1", "--n-generate", "40",
                 "--tracking-uri", store, "--json"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and out["eval_seed"] == 1
    child = tracking.get_run(store, out["run_id"])
    assert child.data.tags["mlflow.parentRunId"] == one_worker["run_id"]
    assert child.data.metrics["class_hit"] == pytest.approx(out["class_hit"])
    # a different seed picks different shots, so at least one figure moves
    assert out["fid_domain"] != pytest.approx(one_worker["fid_domain"])


def test_generate_writes_a_grid_from_four_images(store, capsys, one_worker, tmp_path):
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    paths = []
    for i, img in enumerate(digits.images[digits.target == 9][:4]):
        p = tmp_path / f"nine{i}.png"
        Image.fromarray((img * 255 / 16).astype("uint8")).save(p)
        paths.append(str(p))
    out = tmp_path / "grid.png"
    code = main(["generate", one_worker["run_id"], "--images", *paths, "--n", "16", "--out", str(out),
                 "--save-images", str(tmp_path / "each"), "--tracking-uri", store, "--json"])
    assert code == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n"] == 16
    grid = Image.open(out)
    assert grid.size[0] >= 4 * 32 and grid.size[1] >= 4 * 32
    assert len(list((tmp_path / "each").glob("*.png"))) == 16
