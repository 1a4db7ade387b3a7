"""What a run records for MLflow's UI, read back with MLflow's own client on a real tiny run.

One FIGR run on the bundled digits (4 meta-steps, validation samples at steps 2 and 4) into a SQLite store;
then: the experiment's kind tag, the dataset inputs (training and evaluation), the sample grids as images at
their steps, the selected checkpoint as a pyfunc LoggedModel found by ``search_logged_models`` and loaded
by ``mlflow.pyfunc.load_model``, the run's description, and ``generate`` going through that model.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from orchestrator import tracking
from orchestrator.cli import main

FAST = ["--set", "width=8", "--set", "val_generate=72", "--set", "n_generate=40", "--set", "eval_every=2",
        "--set", "select_metric=last", "--set", "inner_steps=3", "--set", "adapt_steps=3"]
EXPERIMENT = "mlflow-record"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, ray_local):
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("record")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    assert main(["train", "figr", "--steps", "4", *FAST, "--tracking-uri", uri, "--experiment", EXPERIMENT]) == 0
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name(EXPERIMENT)
    (run,) = c.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    return type("Trained", (), {"uri": uri, "client": c, "exp": exp, "run": run, "root": root})


def _digit_shots(k: int, digit: int = 9) -> np.ndarray:
    """k digits as the model takes them: float32 [k, 1, 32, 32] in [-1, 1] (as data.load_images makes them)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    imgs = [np.asarray(Image.fromarray((im * 255 / 16).astype("uint8")).resize((32, 32), Image.BILINEAR))
            for im in d.images[d.target == digit][:k]]
    return (np.stack(imgs)[:, None].astype(np.float32) / 127.5 - 1.0).astype(np.float32)


def test_the_experiment_opens_on_its_runs(trained):
    assert trained.exp.tags.get("mlflow.experimentKind") == "custom_model_development"
    # An experiment made before the tag existed gets it the next time a command uses it.
    exp_id = trained.client.create_experiment("older", artifact_location=(trained.root / "older").as_uri())
    assert "mlflow.experimentKind" not in trained.client.get_experiment(exp_id).tags
    assert tracking.experiment_id(trained.uri, "older") == exp_id
    assert trained.client.get_experiment(exp_id).tags["mlflow.experimentKind"] == "custom_model_development"


def test_the_dataset_is_an_input_in_training_and_evaluation_contexts(trained):
    inputs = trained.client.get_run(trained.run.info.run_id).inputs.dataset_inputs
    by_context = {next(t.value for t in i.tags if t.key == "mlflow.data.context"): i.dataset for i in inputs}
    assert set(by_context) == {"training", "evaluation"}
    train_ds, eval_ds = by_context["training"], by_context["evaluation"]
    assert (train_ds.name, eval_ds.name) == ("digits/base", "digits/novel")
    split = tracking.load_json_artifact(trained.uri, trained.run.info.run_id, "split.json")
    for ds, part in ((train_ds, "base"), (eval_ds, "novel")):
        profile = json.loads(ds.profile)
        assert profile["split_seed"] == split["seed"] and profile["image_size"] == 32 and profile["part"] == part
        assert profile["classes"] == len(split[part]) and profile["images"] > 0
        assert "load_digits" in ds.source and len(ds.digest) == 16
    assert train_ds.digest != eval_ds.digest


def test_sample_grids_are_images_at_their_steps(trained):
    """``MlflowClient.log_image(key=..., step=...)`` keeps each image under ``images/`` with its key and step in
    the file name (MLflow 3.17: ``<key>+step+<step>+timestamp+<ms>+<uuid>.png`` and a compressed preview), which
    the UI's step slider reads."""
    names = [Path(a.path).name for a in trained.client.list_artifacts(trained.run.info.run_id, "images")]
    steps = sorted(int(n.split("+step+")[1].split("+")[0]) for n in names
                   if n.startswith("val_samples+step+") and n.endswith(".png") and "compressed" not in n)
    assert steps == [2, 4], names


def test_the_selected_checkpoint_is_a_pyfunc_logged_model(trained):
    import mlflow

    run_id = trained.run.info.run_id
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(trained.uri)
    try:
        (model,) = mlflow.search_logged_models(experiment_ids=[trained.exp.experiment_id],
                                               filter_string=f"source_run_id='{run_id}'", output_format="list")
        assert model.status == mlflow.entities.LoggedModelStatus.READY and model.source_run_id == run_id
        outputs = trained.client.get_run(run_id).outputs.model_outputs
        assert [(o.model_id, o.step) for o in outputs] == [(model.model_id, 4)]
        pyfunc = mlflow.pyfunc.load_model(f"models:/{model.model_id}")
    finally:
        mlflow.set_tracking_uri(previous)
    shots = _digit_shots(3)
    fake = pyfunc.predict(shots, params={"n": 5, "seed": 1})
    assert fake.shape == (5, 1, 32, 32) and fake.dtype == np.float32
    assert np.isfinite(fake).all() and fake.min() >= -1.0 and fake.max() <= 1.0 and fake.std() > 0
    # It is the selected checkpoint: the same method built from checkpoint/model.pt makes the same images.
    from orchestrator import lifecycle
    from orchestrator.kinds import build_method

    method, cfg, split, saved = lifecycle.load_run(trained.uri, run_id)
    direct = build_method(method, cfg, (1, 32, 32), num_classes=len(split["class_names"]))
    direct.load_state_dict(saved["state"])
    expected = direct.adapt(torch.from_numpy(shots), seed=1).sample(5, seed=1).detach().numpy()
    np.testing.assert_allclose(fake, expected, atol=1e-5)
    # Models from code: the code file is logged, nothing of the model is a pickle.
    location = Path(model.artifact_location.removeprefix("file://"))
    assert (location / "mlflow_model_code.py").is_file() and (location / "artifacts" / "model.pt").is_file()
    assert not list(location.rglob("*.pkl"))


def test_the_description_summarises_the_result(trained):
    note = trained.client.get_run(trained.run.info.run_id).data.tags["mlflow.note.content"]
    for part in ("**figr** on **digits**", "meta_steps 4", "train_seconds", "class_hit", "controls:", "unadapted",
                 "command: `python -m orchestrator"):  # (sys.argv: here pytest's, as main() runs in-process)
        assert part in note, (part, note)
    assert "not evaluated yet" not in note  # the opening description was replaced by the result


def test_generate_goes_through_the_logged_model(trained, tmp_path, capsys):
    from PIL import Image

    from orchestrator.evaluation import save_grid

    shots = _digit_shots(3)
    paths = []
    for i, s in enumerate(shots):
        p = tmp_path / f"nine{i}.png"
        Image.fromarray(((s[0] + 1) * 127.5).round().astype("uint8")).save(p)
        paths.append(str(p))
    out = tmp_path / "grid.png"
    run_id = trained.run.info.run_id
    assert main(["generate", run_id, "--images", *paths, "--n", "4", "--seed", "2", "--out", str(out),
                 "--tracking-uri", trained.uri, "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n"] == 4

    # Same pixels as the pyfunc model's own output for those shots (the grid is written by the same save_grid).
    from orchestrator import mlflow_model
    from orchestrator.data import load_images

    loaded = load_images(paths, 32, 1, background="black")
    generator = mlflow_model.load_generator(trained.uri, run_id, tmp_path / "dl")
    fake = generator.predict(loaded.numpy(), params={"n": 4, "seed": 2})
    save_grid(torch.from_numpy(fake), tmp_path / "expected.png", nrow=2)
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(tmp_path / "expected.png")))

    # generate reads the model's own weights file (weights_only): a pickle planted there is refused, never run.
    model = mlflow_model.find_model(trained.uri, run_id)
    weights = Path(model.artifact_location.removeprefix("file://")) / "artifacts" / "model.pt"
    assert weights.is_file()
    keep = tmp_path / "model.pt.keep"
    shutil.copy(weights, keep)
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {shlex.quote(str(marker))}",))

    torch.save({"state": {"w": Payload()}, "step": 4, "elapsed_s": 0.0}, weights)
    try:
        code = main(["generate", run_id, "--images", *paths, "--out", str(tmp_path / "no.png"),
                     "--tracking-uri", trained.uri])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and "refused to load" in err[-1], err
        assert not marker.exists() and not (tmp_path / "no.png").exists()
    finally:
        shutil.copy(keep, weights)


def test_sweep_trials_have_readable_names():
    from orchestrator.sweep import trial_run_name

    assert trial_run_name("mfh", "a1b2c3_00003", {"lr": 0.001}) == "mfh-t003-lr1e-3"
    assert trial_run_name("figr", "x_00012", {"meta_lr": 0.5, "inner_steps": 4}) == "figr-t012-isteps4-mlr0.5"
