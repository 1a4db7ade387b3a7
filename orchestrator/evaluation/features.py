"""The feature space every FID / KID / diversity / class-hit number is computed in.

Two kinds, and the kind is part of every metric name (``fid_inception`` vs ``fid_domain``) so a
fallback is never passed off as the paper's metric:

- ``inception``: pytorch-fid's FID Inception network (2048-d pool3 features), used when its
  weights file ``pt_inception-2015-12-05-6726825d.pth`` is found, either at an explicit path or in
  torch.hub's checkpoint cache (``$TORCH_HOME/hub/checkpoints/``). Loaded strictly offline.
- ``domain``: a small CNN classifier trained on the split's BASE classes only (never validation or
  novel classes), whose 64-d penultimate layer is the feature. 64 dimensions because FID needs
  more samples than dimensions and few-shot evaluation sets are small. Trained once per
  (dataset, split, image shape, architecture, recipe) and cached as a file.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from orchestrator.errors import UserError

FID_WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
DOMAIN_ARCH_VERSION = "domain-cnn-v1"  # bump when DomainNet or its training recipe changes
DOMAIN_DIM = 64
BASE_STATS_MAX_IMAGES = 5000  # base-class images behind the standardisation statistics (seeded, equal per class)
BASE_STATS_MAX_IMAGES_LARGE = 1000  # the same above 512 dims (Inception: 1000 forward passes at 299x299 on a CPU
                                    # take minutes; per-dimension mean/std need no more)
_HELD_OUT_PER_CLASS = 2  # base-class images kept aside to report the classifier's accuracy


def _log(msg: str) -> None:
    print(f"[features] {msg}", file=sys.stderr, flush=True)


class Features:
    """A frozen feature extractor: ``features(images [-1,1] [N,C,H,W]) -> np.ndarray [N, dim]``.

    ``kind`` is "inception" or "domain" and names the metrics; ``description`` says in words what
    was used (logged with results); ``base_accuracy`` is the domain classifier's held-out accuracy
    on base classes (None for inception); ``classes`` the dataset classes it was trained on.
    ``head`` (optional) maps features to class logits (the domain classifier's own last layers, or
    Inception's 1008-way fc on pool3): Inception Score and Mode Score need class probabilities,
    and computing them from the features costs no second pass over the images.
    ``base_classes``: the split's base classes, whose real images' per-dimension mean and standard
    deviation (:meth:`base_statistics`) standardise the features before FID, KID, PRDC and the
    memorisation figure (set by :func:`get_features` / :func:`domain_features`; None = unknown).
    """

    def __init__(self, kind: str, dim: int, net: nn.Module, preprocess: Callable[[torch.Tensor], torch.Tensor],
                 device: torch.device | str = "cpu", *, batch_size: int = 256, description: str = "",
                 base_accuracy: float | None = None, classes: list[int] | None = None, source: Path | None = None,
                 head: nn.Module | None = None, base_classes: list[int] | None = None):
        if kind not in ("inception", "domain"):
            raise ValueError(f"unknown feature kind {kind!r}")
        self.kind = kind
        self.dim = int(dim)
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self.preprocess = preprocess
        self.batch_size = batch_size
        self.description = description
        self.base_accuracy = base_accuracy
        self.classes = list(classes) if classes is not None else None
        self.source = source
        self.head = head.eval() if head is not None else None
        self.base_classes = [int(c) for c in base_classes] if base_classes is not None else None
        self._base_stats: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

    def base_statistics(self, ds: Any, classes: list[int] | None = None, *, max_images: int | None = None,
                        seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Per-dimension mean and standard deviation of these features on real images of ``classes``.

        ``classes`` defaults to ``base_classes`` (ValueError if both are None). At most ``max_images``
        images (default ``BASE_STATS_MAX_IMAGES``, or ``BASE_STATS_MAX_IMAGES_LARGE`` above 512
        dimensions): an equal, seeded share of each class (``np.random.default_rng([seed, class])``), every
        image when they fit. Returns ``(mean, std)``, float64 [dim] each, in feature units; ``std`` is
        floored at 1e-3 x its median over dimensions (a dimension constant on the base classes would
        otherwise divide by 0 and blow up whatever varies there). Computed once per (dataset name,
        classes, max_images, seed) and kept on this object (it travels with it to Ray workers).
        Source: ours (issue 12: "features standardised with base-class statistics before FID and KID").
        """
        classes = self.base_classes if classes is None else [int(c) for c in classes]
        if max_images is None:
            max_images = BASE_STATS_MAX_IMAGES if self.dim <= 512 else BASE_STATS_MAX_IMAGES_LARGE
        if not classes:
            raise ValueError("base_statistics needs the base classes (none given and none recorded)")
        key = (str(getattr(ds, "name", "")), tuple(classes), int(max_images), int(seed))
        if key not in self._base_stats:
            per_class = max(2, -(-int(max_images) // len(classes)))
            idx = []
            for c in classes:
                ci = np.asarray(ds.class_indices(c))
                if len(ci) > per_class:
                    ci = np.sort(np.random.default_rng([seed, c]).choice(ci, per_class, replace=False))
                idx.append(ci)
            idx = np.concatenate(idx)
            feats = np.concatenate([self(ds.get(idx[i:i + 512]).float()) for i in range(0, len(idx), 512)])
            mean, std = feats.mean(0), feats.std(0)
            med = float(np.median(std))
            std = np.maximum(std, 1e-3 * med) if med > 0 else np.where(std > 0, std, 1.0)
            self._base_stats[key] = (mean, std)
            _log(f"base-class feature statistics from {len(idx)} images of {len(classes)} classes")
        return self._base_stats[key]

    @torch.no_grad()
    def class_probs(self, feats: np.ndarray) -> np.ndarray | None:
        """Softmax of ``head`` on features from ``__call__`` ([N, dim] -> [N, classes]); None without a head."""
        if self.head is None:
            return None
        dev = next(self.head.parameters()).device
        logits = self.head(torch.as_tensor(np.asarray(feats), dtype=torch.float32, device=dev))
        return torch.softmax(logits.double(), dim=1).cpu().numpy()

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> np.ndarray:
        if images.ndim != 4:
            raise ValueError(f"expected images [N, C, H, W], got shape {tuple(images.shape)}")
        out = []
        for start in range(0, images.shape[0], self.batch_size):
            x = images[start:start + self.batch_size].to(self.device, torch.float32)
            out.append(self.net(self.preprocess(x)).reshape(x.shape[0], -1).double().cpu().numpy())
        if not out:
            return np.zeros((0, self.dim))
        feats = np.concatenate(out)
        assert feats.shape[1] == self.dim, (feats.shape, self.dim)
        return feats

    def __repr__(self) -> str:
        return f"Features(kind={self.kind!r}, dim={self.dim}, {self.description})"


# ---------------------------------------------------------------- Inception (pytorch-fid) -----

class _InceptionPool3(nn.Module):
    """pytorch-fid's InceptionV3 returning only the 2048-d final average pool, as [N, 2048]."""

    def __init__(self, inception: nn.Module):
        super().__init__()
        self.inception = inception

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inception(x)[0].flatten(1)


def _inception_preprocess(x: torch.Tensor) -> torch.Tensor:
    # pytorch-fid reads images as RGB in [0, 1] (grayscale PNGs become 3 equal channels) and its
    # InceptionV3 (resize_input=True, normalize_input=True) resizes bilinearly to 299 and rescales.
    x = ((x + 1) / 2).clamp(0, 1)
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    elif x.shape[1] != 3:
        raise ValueError(f"Inception features need 1 or 3 channels, got {x.shape[1]}")
    return x


def find_inception_weights(explicit: Path | str | None = None) -> Path | None:
    """The FID Inception weights file: an explicit file (or a folder holding it), else torch.hub's cache.

    An explicit path that does not hold the file is a user error (never a silent fallback).
    """
    if explicit is not None:
        p = Path(explicit).expanduser()
        if p.is_dir():
            p = p / FID_WEIGHTS_FILENAME
        if not p.is_file():
            raise UserError(f"Inception weights not found at {p}; give the path of {FID_WEIGHTS_FILENAME} "
                            "or leave it out to use FID on base-classifier features")
        return p.resolve()
    cached = Path(torch.hub.get_dir()) / "checkpoints" / FID_WEIGHTS_FILENAME
    return cached.resolve() if cached.is_file() else None


_HUB_LOCK = threading.Lock()


@contextlib.contextmanager
def _hub_dir_holding(weights: Path):
    """Point torch.hub at a folder whose checkpoints/ holds ``weights`` under pytorch-fid's file name.

    pytorch-fid's ``fid_inception_v3`` always calls ``load_state_dict_from_url``, which loads the
    cached file when ``<hub dir>/checkpoints/<name>`` exists and only otherwise downloads. So with
    the file in place nothing touches the network. The previous hub dir is restored exactly after.
    """
    with _HUB_LOCK:
        if (Path(torch.hub.get_dir()) / "checkpoints" / FID_WEIGHTS_FILENAME).resolve() == weights:
            yield
            return
        previous = torch.hub._hub_dir  # None means "$TORCH_HOME/hub"; restored as it was
        with tempfile.TemporaryDirectory(prefix="fid_hub_") as tmp:
            ckpt = Path(tmp) / "checkpoints"
            ckpt.mkdir()
            try:
                (ckpt / FID_WEIGHTS_FILENAME).symlink_to(weights)
            except OSError:
                import shutil
                shutil.copyfile(weights, ckpt / FID_WEIGHTS_FILENAME)
            torch.hub.set_dir(tmp)
            try:
                yield
            finally:
                torch.hub._hub_dir = previous


def fid_inception_architecture() -> nn.Module:
    """pytorch-fid's FID Inception (the torchvision v3 with its FID blocks), randomly initialised.

    Mirrors ``pytorch_fid.inception.fid_inception_v3`` minus the weight download; used to write a
    state dict of the right structure (tests, or converting weights) without a network.
    """
    from pytorch_fid import inception as pi

    net = pi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    net.Mixed_5b = pi.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = pi.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = pi.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = pi.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = pi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = pi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = pi.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = pi.FIDInceptionE_1(1280)
    net.Mixed_7c = pi.FIDInceptionE_2(2048)
    return net


def inception_features(weights: Path | str, device: torch.device | str = "cpu", batch_size: int = 50) -> Features:
    """pytorch-fid's ``InceptionV3([BLOCK_INDEX_BY_DIM[2048]])`` with weights loaded from a local file."""
    from pytorch_fid.inception import InceptionV3

    weights = find_inception_weights(weights)
    t0 = time.time()
    with _hub_dir_holding(weights):
        model = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]])  # resize_input, normalize_input on
    desc = f"FID Inception (pytorch-fid InceptionV3 pool3, 2048-d) from {weights}"
    _log(f"using {desc} (loaded in {time.time() - t0:.1f}s)")
    return Features("inception", 2048, _InceptionPool3(model), _inception_preprocess, device,
                    batch_size=batch_size, description=desc, source=weights, head=_inception_fc(weights))


def _inception_fc(weights: Path) -> nn.Module | None:
    """The 2048 -> 1008 fc of the same weights file (pool3 feeds it), for the Inception Score; None if absent."""
    state = torch.load(weights, map_location="cpu", weights_only=True)
    if "fc.weight" not in state or "fc.bias" not in state:
        _log(f"{weights} has no fc layer: no inception_score/mode_score")
        return None
    fc = nn.Linear(state["fc.weight"].shape[1], state["fc.weight"].shape[0])
    fc.load_state_dict({"weight": state["fc.weight"], "bias": state["fc.bias"]})
    return fc


class _DomainHead(nn.Module):
    """DomainNet's layers after the 64-d feature: ReLU then the base-class classifier."""

    def __init__(self, net: DomainNet):
        super().__init__()
        self.linear = net.head

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.linear(F.relu(f))


# ---------------------------------------------------------------- domain classifier -----------

class DomainNet(nn.Module):
    """Small CNN: 3 conv blocks (BN, ReLU, 2x2 max-pool), global average pool, 64-d embedding, classifier.

    The feature is the 64-d embedding *before* its ReLU: dense and full-rank, so covariances (FID)
    are well conditioned.
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 16, dim: int = DOMAIN_DIM):
        super().__init__()
        chans = [in_channels, width, 2 * width, 4 * width]
        layers: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2, ceil_mode=True)]
        self.body = nn.Sequential(*layers)
        self.embed = nn.Linear(chans[-1], dim)
        self.head = nn.Linear(dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(F.adaptive_avg_pool2d(self.body(x), 1).flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.features(x)))


class _Embed(nn.Module):
    def __init__(self, net: DomainNet):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.features(x)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _domain_key(ds: Any, split: Any, epochs: int, seed: int) -> dict[str, Any]:
    return {"dataset": ds.name, "split": split.to_dict(), "image_shape": list(ds.image_shape),
            "arch": DOMAIN_ARCH_VERSION, "dim": DOMAIN_DIM, "epochs": epochs, "seed": seed,
            "held_out_per_class": _HELD_OUT_PER_CLASS}


def _domain_cache_path(cache_dir: Path, key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in str(key["dataset"]))
    return Path(cache_dir) / f"domain_features_{safe}_{digest}.pt"


@contextlib.contextmanager
def _torch_threads(n: int | None):
    """Run with ``n`` intra-op threads, restoring the previous setting after (None: unchanged)."""
    if n is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def train_domain_classifier(ds: Any, base: list[int], *, epochs: int, seed: int, device: torch.device | str = "cpu",
                            batch_size: int = 64, lr: float = 3e-3, threads: int | None = -1) -> tuple[DomainNet, float]:
    """Train DomainNet on the given (base) classes; returns it and its held-out accuracy.

    ``_HELD_OUT_PER_CLASS`` images per class (seeded choice) are kept aside for the accuracy.
    No augmentation; Adam with a one-cycle schedule.

    ``threads`` (-1: half the CPU cores, at least 1, on CPU; unchanged on GPU): measured on a
    shared 2-core machine, this small net's training step with 2 OpenMP threads went from 0.02 s
    (idle machine) to 0.5-0.7 s when other processes were busy, while 1 thread stayed at
    0.03-0.09 s; digits training took 50 s with 2 threads vs 5 s with 1 under the same load, and
    Omniglot (152 base classes) 21 s with 2 threads on the idle machine vs 37 s with 1. Threads
    that fill every core collapse under load; half the cores do not.
    """
    device = torch.device(device)
    if threads == -1:
        threads = max(1, (os.cpu_count() or 2) // 2) if device.type == "cpu" else None
    with _torch_threads(threads):
        return _train_domain_classifier(ds, base, epochs=epochs, seed=seed, device=device,
                                        batch_size=batch_size, lr=lr)


def _train_domain_classifier(ds: Any, base: list[int], *, epochs: int, seed: int, device: torch.device,
                             batch_size: int, lr: float) -> tuple[DomainNet, float]:
    rng = np.random.default_rng([seed, 7])
    train_idx, test_idx, train_y, test_y = [], [], [], []
    for j, c in enumerate(base):
        idx = rng.permutation(np.asarray(ds.class_indices(c)))
        hold = min(_HELD_OUT_PER_CLASS, max(len(idx) - 1, 0))
        test_idx += list(idx[:hold]); test_y += [j] * hold
        train_idx += list(idx[hold:]); train_y += [j] * (len(idx) - hold)
    x_train = ds.get(np.asarray(train_idx)).float()
    y_train = torch.as_tensor(train_y, dtype=torch.long)
    x_test = ds.get(np.asarray(test_idx)).float() if test_idx else None
    y_test = torch.as_tensor(test_y, dtype=torch.long)

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = DomainNet(ds.image_shape[0], len(base)).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    steps_per_epoch = max(1, (len(y_train) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    t0 = time.time()
    _log(f"training domain classifier on {len(base)} base classes of {ds.name} "
         f"({len(y_train)} images, {epochs} epochs, device {device})")
    for epoch in range(epochs):
        net.train()
        perm = torch.randperm(len(y_train), generator=gen)
        total, correct, loss_sum = 0, 0, 0.0
        for s in range(steps_per_epoch):
            b = perm[s * batch_size:(s + 1) * batch_size]
            x, y = x_train[b].to(device), y_train[b].to(device)
            logits = net(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(b); total += len(b)
            correct += (logits.argmax(1) == y).sum().item()
        if epoch == epochs - 1 or (epoch + 1) % max(1, epochs // 5) == 0:
            _log(f"  epoch {epoch + 1}/{epochs}: loss {loss_sum / total:.3f}, train acc {correct / total:.3f}, "
                 f"{time.time() - t0:.1f}s")
    net.eval()
    acc = float("nan")
    if x_test is not None:
        with torch.no_grad():
            pred = torch.cat([net(x_test[i:i + 256].to(device)).argmax(1).cpu() for i in range(0, len(y_test), 256)])
        acc = float((pred == y_test).float().mean())
    _log(f"domain classifier done in {time.time() - t0:.1f}s: held-out base-class accuracy {acc:.3f} "
         f"({len(y_test)} images)")
    return net, acc


def domain_features(ds: Any, split: Any, cache_dir: Path | str, device: torch.device | str = "cpu",
                    epochs: int | None = None, seed: int = 0) -> Features:
    """FID features from a classifier trained on ``split.base`` only, cached in ``cache_dir``.

    The cache file is keyed by (dataset name, split.to_dict(), image shape, architecture version,
    epochs, seed): trained once per dataset and split, loaded afterwards. ``epochs`` defaults to
    about 1500 image presentations per base class, clamped to [8, 20] epochs: 8 epochs on digits
    (~180 images a class), 20 on Omniglot-sized classes (20 images).
    """
    base = [int(c) for c in split.base]
    if set(base) & (set(int(c) for c in split.val) | set(int(c) for c in split.novel)):
        raise ValueError("split.base overlaps val/novel classes")
    if epochs is None:
        per_class = max(1, int(np.mean([len(ds.class_indices(c)) for c in base])))
        epochs = int(np.clip(round(1500 / per_class), 8, 20))
    key = _domain_key(ds, split, epochs, seed)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = _domain_cache_path(cache_dir, key)
    lock_path = path.with_suffix(".lock")
    with open(lock_path, "w") as lock:  # one process trains; others wait and then load the file
        try:
            import fcntl
            fcntl.flock(lock, fcntl.LOCK_EX)
        except (ImportError, OSError):
            pass
        blob, dirty = None, False
        if path.is_file():
            try:  # tensors, numbers, strings, lists and dicts only: nothing in the file is executed
                blob = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as err:  # noqa: BLE001 - an unreadable or unsafe cache file is retrained, not trusted
                _log(f"ignoring cache file {path} ({type(err).__name__}: {str(err).splitlines()[0][:200]})")
                blob = None
            if blob is not None and blob.get("key") != json.loads(json.dumps(key, default=str)):
                blob = None  # hash collision or stale format: retrain
        if blob is None:
            net, acc = train_domain_classifier(ds, base, epochs=epochs, seed=seed, device=device)
            blob = {"key": json.loads(json.dumps(key, default=str)), "state_dict": {k: v.cpu() for k, v in net.state_dict().items()},
                    "base_accuracy": acc, "classes": base, "num_classes": len(base), "in_channels": ds.image_shape[0]}
            dirty = True
        else:
            _log(f"loaded cached domain classifier {path}")
        feats = _domain_features_from_blob(blob, ds, base, device, path)
        if "base_mean" not in blob:  # new, or written by a version without standardisation statistics
            mean, std = feats.base_statistics(ds, base)
            blob["base_mean"], blob["base_std"] = torch.from_numpy(mean), torch.from_numpy(std)
            dirty = True
        if dirty:
            tmp = path.with_name(path.name + f".tmp{os.getpid()}")
            torch.save(blob, tmp)
            os.replace(tmp, path)
            _log(f"cached domain classifier at {path}")
    feats._base_stats[(str(ds.name), tuple(base), BASE_STATS_MAX_IMAGES, 0)] = (
        torch.as_tensor(blob["base_mean"]).double().numpy(), torch.as_tensor(blob["base_std"]).double().numpy())
    return feats


def _domain_features_from_blob(blob: dict, ds: Any, base: list[int], device: torch.device | str,
                               path: Path) -> Features:
    net = DomainNet(blob["in_channels"], blob["num_classes"])
    net.load_state_dict(blob["state_dict"])
    acc = blob["base_accuracy"]
    desc = (f"domain features (64-d penultimate layer of a CNN trained on the {len(base)} base classes of "
            f"{ds.name}; held-out base accuracy {acc:.3f}) - a fallback, not the Inception FID")
    return Features("domain", DOMAIN_DIM, _Embed(net), _identity, device, description=desc,
                    base_accuracy=acc, classes=blob["classes"], source=path, head=_DomainHead(net),
                    base_classes=base)


def get_features(ds: Any, split: Any, cache_dir: Path | str, device: torch.device | str = "cpu",
                 inception_weights: Path | str | None = None) -> Features:
    """Inception when its weights file is found (explicit path or torch.hub cache), else domain features.

    Prints which one was used; the returned ``.kind`` names the metrics (fid_inception / fid_domain).
    """
    weights = find_inception_weights(inception_weights)
    if weights is not None:
        feats = inception_features(weights, device)
        feats.base_classes = [int(c) for c in split.base]  # standardisation statistics come from these
    else:
        _log(f"no {FID_WEIGHTS_FILENAME} given or in {Path(torch.hub.get_dir()) / 'checkpoints'}; "
             "falling back to domain features (metrics are named *_domain)")
        feats = domain_features(ds, split, cache_dir, device)
    _log(f"feature space: {feats.kind} ({feats.description})")
    return feats
