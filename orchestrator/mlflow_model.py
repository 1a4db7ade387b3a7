"""A generator run's selected checkpoint as an MLflow pyfunc model (MLflow 3's LoggedModel of the run).

``log_generator`` writes the model with MLflow's own format and client APIs (explicit tracking URI and
run id, no fluent active run): ``mlflow.pyfunc.save_model`` in *models-from-code* form (the logged
``code/mlflow_model_code.py`` imports ``FewShotGenerator`` from this installed package and calls
``mlflow.models.set_model``; nothing is cloudpickled), the weights as the artifact ``weights``
(``model.pt``, the checkpoint format, read back with ``torch.load(weights_only=True)``) and what builds
the method as the artifact ``spec`` (JSON). The model is created with ``MlflowClient.create_logged_model``
(``source_run_id`` = the run), linked to the run as an output at the selected step and finalised READY,
so ``mlflow.search_logged_models(filter_string=f"source_run_id='{run_id}'")`` finds it and the run page
lists it.

Loaded with ``mlflow.pyfunc.load_model(path)``, ``predict(shots, params=...)`` adapts on the shots and
returns new images:

- input: float32 ``[k, C, H, W]`` in [-1, 1], the k shot images of one new class (``C, H, W`` the run's
  channels and image size);
- params: ``n`` (images, default 16), ``seed`` (default 0), ``adapt_steps`` (-1: the run's own),
  ``interpolate`` (True: a walk of ``n`` images between two memory slots; methods that offer it);
- output: float32 ``[n, C, H, W]`` in [-1, 1].

Classifier runs (ProtoNet, MetaIRNet) make no images and get no pyfunc model.
"""
from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlflow.pyfunc import PythonModel

from orchestrator import tracking
from orchestrator.checkpoints import load_checkpoint, save_checkpoint
from orchestrator.errors import UserError

MODEL_NAME = "generator"
MODEL_TYPE = "few-shot-image-generator"
CODE_FILE = Path(__file__).with_name("mlflow_model_code.py")
SPEC_FORMAT = 1
DEFAULT_PARAMS = {"n": 16, "seed": 0, "adapt_steps": -1, "interpolate": False}


class FewShotGenerator(PythonModel):
    """MLflow ``PythonModel`` over a method of ``methods/``: adapt on given shots, return generated images."""

    def load_context(self, context) -> None:
        """Build the method from ``spec`` and load ``weights`` with ``weights_only=True`` (``UserError`` if the
        file is anything but plain weights: a planted pickle is refused, never run)."""
        from orchestrator.kinds import build_method

        spec = json.loads(Path(context.artifacts["spec"]).read_text())
        if spec.get("format") != SPEC_FORMAT:
            raise UserError(f"model spec format {spec.get('format')!r} is not {SPEC_FORMAT}: log the model again "
                            f"with this version (python -m orchestrator train)")
        saved = load_checkpoint(Path(context.artifacts["weights"]).parent)
        self.spec = spec
        self.image_shape = tuple(int(s) for s in spec["image_shape"])
        self.method = build_method(spec["method"], spec["config"], self.image_shape,
                                   num_classes=int(spec["num_classes"]))
        self.method.load_state_dict(saved["state"])

    def predict(self, context, model_input: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
        """``model_input``: float32 ``[k, C, H, W]`` in [-1, 1]; returns float32 ``[n, C, H, W]`` in [-1, 1].

        Raises ``UserError`` on a shape other than the run's or values outside [-1, 1].
        """
        p = {**DEFAULT_PARAMS, **(params or {})}
        shots = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        if shots.dim() != 4 or tuple(shots.shape[1:]) != self.image_shape or len(shots) < 1:
            raise UserError(f"shots of shape {tuple(shots.shape)}: the model takes [k, {', '.join(map(str, self.image_shape))}]"
                            f" float32 images in [-1, 1]")
        if not torch.isfinite(shots).all() or shots.min() < -1.0 - 1e-6 or shots.max() > 1.0 + 1e-6:
            raise UserError("shots outside [-1, 1]: scale pixel values v in [0, 255] as v / 127.5 - 1")
        n, seed, steps = int(p["n"]), int(p["seed"]), int(p["adapt_steps"])
        if bool(p["interpolate"]):
            fake = self.method.interpolate(shots, n, seed=seed)
        else:
            fake = self.method.adapt(shots, seed=seed, steps=None if steps < 0 else steps).sample(n, seed=seed)
        return fake.detach().cpu().float().numpy()


def _signature(image_shape: tuple[int, int, int]):
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec, Schema, TensorSpec

    tensor = TensorSpec(np.dtype(np.float32), (-1, *image_shape))
    return ModelSignature(inputs=Schema([tensor]), outputs=Schema([tensor]), params=ParamSchema([
        ParamSpec("n", "long", DEFAULT_PARAMS["n"]), ParamSpec("seed", "long", DEFAULT_PARAMS["seed"]),
        ParamSpec("adapt_steps", "long", DEFAULT_PARAMS["adapt_steps"]),
        ParamSpec("interpolate", "boolean", DEFAULT_PARAMS["interpolate"])]))


def _requirements() -> list[str]:
    """Pinned to what is installed (MLflow's own inference would load the model in a subprocess: slow)."""
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for dist in ("fewshot-orchestrator", "torch", "torchvision", "mlflow", "numpy"):
        try:
            reqs.append(f"{dist}=={version(dist)}")
        except PackageNotFoundError:
            reqs.append(dist)
    return reqs


def log_generator(uri: str, run_id: str, saved: dict[str, Any], *, method: str, cfg: dict[str, Any],
                  image_shape: tuple[int, int, int], num_classes: int) -> str:
    """Log ``saved`` (``{"state", "step", "elapsed_s"}``, the selected checkpoint) of generator ``method`` as a
    pyfunc LoggedModel of run ``run_id``; returns its model id. ``image_shape``: (C, H, W) the method was built
    for; ``num_classes``: classes of the run's dataset (as the method was built)."""
    import mlflow.pyfunc
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus
    from mlflow.models import Model

    c = tracking.client(uri)
    step = int(saved["step"])
    exp = c.get_run(run_id).info.experiment_id
    model = c.create_logged_model(exp, name=MODEL_NAME, source_run_id=run_id, model_type=MODEL_TYPE,
                                  params={k: str(v)[:6000] for k, v in cfg.items()},
                                  tags={"method": method, "dataset": str(cfg.get("dataset", "")),
                                        "selected_step": str(step), "git_commit": tracking.git_commit()})
    try:
        with tempfile.TemporaryDirectory(prefix="fsig-pyfunc-") as tmp:
            weights = save_checkpoint(saved["state"], step, float(saved.get("elapsed_s", 0.0)), Path(tmp) / "weights")
            spec = Path(tmp) / "spec.json"
            spec.write_text(json.dumps({"format": SPEC_FORMAT, "method": method, "config": cfg, "step": step,
                                        "image_shape": list(image_shape), "num_classes": int(num_classes)}))
            local = Path(tmp) / "model"
            with warnings.catch_warnings():  # "no input_example": the signature is given (an example would be run)
                warnings.simplefilter("ignore", UserWarning)
                mlflow.pyfunc.save_model(
                    path=str(local), python_model=str(CODE_FILE), artifacts={"weights": str(weights), "spec": str(spec)},
                    signature=_signature(tuple(image_shape)), pip_requirements=_requirements(),
                    mlflow_model=Model(artifact_path=model.artifact_location, run_id=run_id, model_uuid=model.model_id,
                                       model_id=model.model_id))
            c.log_model_artifacts(model.model_id, str(local))
        c.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=step)])
        c.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    except BaseException:
        c.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
        raise
    return model.model_id


def find_model(uri: str, run_id: str):
    """The newest READY pyfunc LoggedModel whose source is ``run_id`` (a resumed run logs a newer one), or None."""
    from mlflow.entities import LoggedModelStatus

    c = tracking.client(uri)
    exp = c.get_run(run_id).info.experiment_id
    models = [m for m in c.search_logged_models([exp], filter_string=f"source_run_id='{run_id}'")
              if m.status == LoggedModelStatus.READY and m.model_type == MODEL_TYPE]
    return max(models, key=lambda m: m.creation_timestamp) if models else None


def load_generator(uri: str, run_id: str, dst: str | Path):
    """``mlflow.pyfunc.load_model`` of the run's LoggedModel, downloaded into ``dst`` (the caller removes it);
    None when the run has none (runs recorded before models were logged).

    The model's code file must be this package's own (``UserError`` otherwise): MLflow runs it at load.
    """
    import mlflow.artifacts
    import mlflow.pyfunc

    model = find_model(uri, run_id)
    if model is None:
        return None
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model.artifact_location, dst_path=str(dst),
                                                     tracking_uri=uri))
    code = local / CODE_FILE.name  # where MLflow keeps a models-from-code file (and runs it from)
    if not code.is_file() or code.read_bytes() != CODE_FILE.read_bytes():
        raise UserError(f"run {run_id}: logged model {model.model_id}'s code file is not this version's "
                        f"{CODE_FILE.name}; refused to run it (re-train the run, or use the version that logged it)")
    return mlflow.pyfunc.load_model(str(local))
