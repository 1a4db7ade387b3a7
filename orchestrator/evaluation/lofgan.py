"""LoFGAN's evaluation procedure (``main_metric.py``), reproduced beside our protocol: ``evaluate --protocol lofgan``.

Source: edward3862/LoFGAN-pytorch ``main_metric.py`` in its two protocols, and its copies:

- **published** (LoFGAN HEAD, commit ed6c4a8 "add visualization for sim", also ae230eb): lines 79-83 comment
  the seed out; lines 97-106 take the unseen classes by index (``data[85:]`` Flowers / ``[119:]`` Animal Faces /
  ``[1802:]`` VGGFace) and ``num`` = 10 / 10 / 30; lines 108-109 permute the image axis with one
  ``np.random.permutation(data.shape[1])`` for every class; lines 111-112 split ``data_for_gen = data[:, :num]``
  (the conditioning pool) and ``data_for_fid = data[:, num:]`` (the reals); lines 125-133 write 128 reals per
  class, each ``np.random.choice(data_for_fid.shape[1], 1)`` (with replacement; ae230eb wrote every real
  image once instead); lines 144-151 generate 128 fakes per class, each from
  ``idx = np.random.choice(data_for_gen.shape[1], args.n_sample_test)`` (3, with replacement), saved as PNG
  through ``utils.unloader`` (``ToPILImage`` of ``(x + 1) / 2``: ``mul(255).byte()``, truncation); line 153 runs
  ``python -m pytorch_fid real_dir fake_dir`` (one pooled FID over all classes); lines 27-55 compute LPIPS (VGG):
  per class every pair i < j of its fakes, each image read back as uint8 RGB, ``cv2.resize`` to 32 x 32,
  ``lpips.im2tensor`` (to [-1, 1]) and then ``model(img1, img2, normalize=True)`` (which maps [0, 1] to [-1, 1]
  once more, so the network sees [-3, 1]); the mean per class, then over classes.
- **seeded** (LoFGAN commit 51620ad, lines 78-82 ``SEED = 0`` seeding random/numpy/torch; no permutation; every
  real of ``data[:, num:]`` once, written before any random draw, lines 108-117). kobeshegu/ECCV2022_WaveGAN
  ``main_metric.py`` is this protocol (``SEED = 0``, no ``np.random.permutation``, all reals once).
- **f2dgan** (ZYBOBO/F2DGAN ``main_metric.py``: ``SEED = 0`` and ``per = np.random.permutation(data.shape[1])``,
  every real once; the 128-draw block is commented out).

The draws are made with numpy's legacy ``RandomState`` calls in the scripts' order (permutation, then the
reals' draws if any, then each class's 128 support draws), so a seeded variant selects exactly what the script
selects after ``np.random.seed(seed)`` (``tests/test_lofgan_protocol.py`` checks this against a transcription).
An unseeded variant draws a fresh seed from the OS, and records it (``lofgan_drawn_seed``) so the run can be
repeated. What is ours: the generator is called through the harness's ``adapt``/``sample`` (one adaptation per
support triple, one sample from it, seeds derived from (seed, class, fake)), since our methods are not LoFGAN's
``trainer.generate``; LoFGAN's torch stream inside its generator is not reproduced. FID is pytorch-fid's
Fréchet distance (``metrics.fid``) on Inception pool features computed in memory from the same uint8 images the
script would write (no PNG round trip needed: PNG is lossless), without our base-class standardisation. Our
FID refuses a set with no more samples than feature dimensions (pytorch-fid would regularise it); that is
kept. LPIPS: cv2 is not installed here, so its ``INTER_LINEAR`` resize is emulated with bilinear,
half-pixel-centre interpolation without antialiasing, rounded to uint8 (cv2's fixed-point arithmetic can
differ by one grey level).

Features: the FID Inception network when its weights file is given or found (the rule of
``features.find_inception_weights``, as for ``fid_inception``); otherwise the base-class domain features, and
the run says its number is not comparable with published ones. LPIPS needs a VGG16 backbone file
(``--lpips-weights``; LoFGAN uses ``net='vgg'``); without one the within-class feature diversity is reported
under its own name (``lofgan_diversity_<kind>``), never as LPIPS.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from orchestrator.errors import UserError
from orchestrator.evaluation import metrics as M

PRESETS: dict[str, dict[str, Any]] = {
    # LoFGAN HEAD (ed6c4a8): unseeded, one permutation, 128 reals drawn with replacement per class
    "published": {"seed": None, "permute": True, "reals": "draw128"},
    # LoFGAN 51620ad, WaveGAN, SDTM-GAN: seed 0, no permutation, every real once
    "seeded": {"seed": 0, "permute": False, "reals": "all"},
    # F2DGAN: seed 0, permutation, every real once
    "f2dgan": {"seed": 0, "permute": True, "reals": "all"},
}
REALS = ("all", "draw128")
RESIZES = ("pytorch-fid", "antialias")
FID_MODES = ("pooled", "per-class")
REALS_DRAWN = 128  # main_metric.py line 127: ``for i in range(128)`` (the reals' draws)


@dataclass(frozen=True)
class Variant:
    """One LoFGAN-protocol variant; ``describe()`` is the string recorded as ``cmp.protocol_variant``.

    ``seed``: None = unseeded (a fresh OS seed per evaluation, recorded), else ``np.random.seed(seed)``;
    ``permute``: one ``np.random.permutation`` of the image axis for all classes; ``reals``: ``all`` (every image
    after the pool once) or ``draw128`` (128 per class with replacement); ``pool``: ``num``, the conditioning pool
    per class (None: the benchmark's, else 10); ``shots``: support images per fake (``n_sample_test``, 3);
    ``fakes``: fakes per class (128); ``resize``: ``pytorch-fid`` (Inception's own bilinear resize to 299,
    align_corners=False) or ``antialias`` (bicubic with antialiasing to 299 first, as clean-fid recommends);
    ``fid``: ``pooled`` (the script) or ``per-class`` (mean of per-class FIDs).
    """

    preset: str = "published"
    seed: int | None = None
    permute: bool = True
    reals: str = "draw128"
    pool: int | None = None
    shots: int = 3
    fakes: int = 128
    resize: str = "pytorch-fid"
    fid: str = "pooled"

    def describe(self) -> str:
        d = asdict(self)
        d["seed"] = "none" if self.seed is None else self.seed
        d["permute"] = int(self.permute)
        d["pool"] = "benchmark" if self.pool is None else self.pool
        return ",".join(f"{k}={v}" for k, v in d.items())


def parse_variant(text: str | None) -> Variant:
    """``"preset=published,seed=none,permute=1,reals=draw128,pool=10,shots=3,fakes=128,resize=pytorch-fid,fid=pooled"``
    (any subset; the preset's values first, then the keys given) -> :class:`Variant`.

    Raises:
        UserError: an unknown key, preset or value (one line naming the accepted ones).
    """
    pairs: dict[str, str] = {}
    for part in [p.strip() for p in (text or "").split(",") if p.strip()]:
        key, sep, value = part.partition("=")
        if not sep:
            raise UserError(f"--variant {text!r}: {part!r} is not KEY=VALUE; e.g. --variant preset=seeded,fakes=256")
        pairs[key.strip()] = value.strip()
    preset = pairs.pop("preset", "published")
    if preset not in PRESETS:
        raise UserError(f"--variant preset={preset}: choose one of {', '.join(PRESETS)}")
    v = replace(Variant(), preset=preset, **PRESETS[preset])
    fields = {f for f in asdict(v)} - {"preset"}
    for key, value in pairs.items():
        if key not in fields:
            raise UserError(f"--variant {key}=...: unknown key; use preset, {', '.join(sorted(fields))}")
        try:
            if key == "seed":
                val: Any = None if value.lower() in ("none", "") else int(value)
            elif key == "permute":
                if value not in ("0", "1"):
                    raise ValueError
                val = value == "1"
            elif key == "pool":
                val = None if value == "benchmark" else int(value)
            elif key in ("shots", "fakes"):
                val = int(value)
            else:
                val = value
        except ValueError:
            raise UserError(f"--variant {key}={value}: not a valid value (seed: int or none; permute: 0 or 1; "
                            f"pool/shots/fakes: integers)") from None
        v = replace(v, **{key: val})
    for key, allowed in (("reals", REALS), ("resize", RESIZES), ("fid", FID_MODES)):
        if getattr(v, key) not in allowed:
            raise UserError(f"--variant {key}={getattr(v, key)}: choose one of {', '.join(allowed)}")
    if v.shots < 1 or v.fakes < 2 or (v.pool is not None and v.pool < 1) or (v.seed is not None and v.seed < 0):
        raise UserError(f"--variant {v.describe()}: need shots >= 1, fakes >= 2, pool >= 1, seed >= 0")
    return v


@dataclass
class Selection:
    """What main_metric.py selects, as positions within each unseen class's images (array order, 0-based).

    ``perm`` [images]: the image-axis permutation (identity when not permuted); ``pool`` [classes, num] and
    ``reals`` [classes, R]: positions (after ``perm``, i.e. ``perm[...]``) of the conditioning pool and of the
    reals; ``support`` [classes, fakes, shots]: the positions of each fake's support images.
    """

    perm: np.ndarray
    pool: np.ndarray
    reals: np.ndarray
    support: np.ndarray


def select(n_classes: int, n_images: int, num: int, variant: Variant, rng: np.random.RandomState) -> Selection:
    """main_metric.py's draws, in its order, from ``rng`` (``np.random.RandomState(seed)`` = ``np.random.seed(seed)``).

    All classes are assumed to hold ``n_images`` images (the ``.npy`` layout). Raises UserError when
    ``num`` leaves no real image.
    """
    if n_images <= num:
        raise UserError(f"LoFGAN protocol: classes hold {n_images} images, the conditioning pool takes {num}: "
                        f"no real image is left; pass --variant pool=N with N < {n_images}")
    perm = rng.permutation(n_images) if variant.permute else np.arange(n_images)  # lines 108-109
    pool = np.tile(perm[:num], (n_classes, 1))  # line 111: data[:, :num] after the permutation
    rest = perm[num:]  # line 112
    if variant.reals == "draw128":  # lines 125-129: np.random.choice(data_for_fid.shape[1], 1), 128 per class
        reals = np.stack([np.array([rest[int(rng.choice(len(rest), 1)[0])] for _ in range(REALS_DRAWN)])
                          for _ in range(n_classes)])
    else:  # 51620ad lines 37-42: every real once, no draw
        reals = np.tile(rest, (n_classes, 1))
    support = np.empty((n_classes, variant.fakes, variant.shots), dtype=np.int64)
    for c in range(n_classes):  # lines 144-146
        for i in range(variant.fakes):
            support[c, i] = pool[c, rng.choice(num, variant.shots)]
    return Selection(perm=perm, pool=pool, reals=reals, support=support)


def _derived(seed: int, c: int, i: int, purpose: int) -> int:
    return int(np.random.SeedSequence([seed, c, i, purpose]).generate_state(1)[0] & 0x7FFFFFFF)


def to_uint8_like_unloader(x: torch.Tensor) -> torch.Tensor:
    """utils.unloader + PNG: float [-1, 1] -> uint8 via ToPILImage's ``mul(255).byte()`` of ``(x + 1) / 2`` (truncates).

    Values are clamped to [0, 1] first (``byte()`` of an out-of-range value wraps; a generator's tanh output
    stays inside, and wrapping would be an artefact, not the protocol).
    """
    return ((x.float() + 1) / 2).clamp(0, 1).mul(255).to(torch.uint8)


def generate(model: Any, ds: Any, classes: list[int], sel: Selection, *, seed: int, adapt_steps: int | None,
             chunk: int = 16, which: dict[int, list[int]] | None = None) -> dict[int, torch.Tensor]:
    """Fake images per class: fake i of class c from ``model.adapt(ds images of sel.support[c, i]) .sample(1)``.

    Returns class -> float [fakes, C, H, W] in [-1, 1] (what the model returned). Uses ``adapt_many`` in chunks
    of ``chunk`` triples when the model has it (methods/base.py), else ``adapt`` one triple at a time; seeds are
    derived from (seed, class, fake). ``which``: class -> the fake positions to make (in that order; a class
    left out gets none); None: every fake of every class.
    """
    out: dict[int, torch.Tensor] = {}
    device = getattr(model, "device", None)
    for k, c in enumerate(classes):
        idx = np.asarray(ds.class_indices(c))
        fakes = []
        todo = list(range(sel.support.shape[1])) if which is None else list(which.get(c, []))
        if not todo:
            continue
        for start in range(0, len(todo), chunk):
            ids = todo[start:start + chunk]
            xs = [ds.get(idx[sel.support[k, i]]) for i in ids]
            if device is not None:
                xs = [x.to(device) for x in xs]
            seeds = [_derived(seed, c, i, 1) for i in ids]
            if hasattr(model, "adapt_many"):
                samplers = model.adapt_many(xs, seeds, adapt_steps)
            else:
                samplers = [model.adapt(x, seed=s, steps=adapt_steps) for x, s in zip(xs, seeds)]
            with torch.no_grad():
                for i, sampler in zip(ids, samplers):
                    fakes.append(sampler.sample(1, seed=_derived(seed, c, i, 2)).detach().float().cpu())
        out[c] = torch.cat(fakes)
    return out


@dataclass
class Reuse:
    """What several LoFGAN-protocol evaluations of ONE model on ONE dataset may share (the sensitivity rows that
    differ from the baseline only in scoring or in how many fakes they draw), each keyed by what determines it:

    ``fakes``: (drawn seed, class, fake position, its support dataset indices, adapt steps) -> the uint8 fake
    [C, H, W]: a fake is ``adapt(those images, seed derived from (seed, class, fake)).sample(1, another such
    seed)``, so an evaluation whose selection gives a fake the same key gets the same image (a method's
    ``adapt``/``sample`` are functions of their inputs and seeds, methods/base.py). ``real_features``:
    (feature network, resize, dataset index) -> its feature vector. ``lpips``: (the fakes' keys of one class)
    -> LoFGAN's LPIPS of that class. The caller keeps one ``Reuse`` per model and dataset.
    """

    fakes: dict[tuple, torch.Tensor] = field(default_factory=dict)
    real_features: dict[tuple, np.ndarray] = field(default_factory=dict)
    lpips: dict[tuple, float] = field(default_factory=dict)


def fakes_uint8(model: Any, ds: Any, classes: list[int], sel: Selection, *, seed: int, adapt_steps: int | None,
                reuse: Reuse | None = None) -> tuple[dict[int, torch.Tensor], dict[int, list[tuple]]]:
    """``generate``'s fakes quantised as LoFGAN's unloader does (``to_uint8_like_unloader``), class -> uint8
    [fakes, C, H, W], and class -> each fake's ``Reuse.fakes`` key. With ``reuse``, only the fakes whose key it
    lacks are generated, and they are added to it."""
    keys = {c: [(int(seed), int(c), i, tuple(int(j) for j in np.asarray(ds.class_indices(c))[sel.support[k, i]]),
                 adapt_steps) for i in range(sel.support.shape[1])] for k, c in enumerate(classes)}
    if reuse is None:
        made = generate(model, ds, classes, sel, seed=seed, adapt_steps=adapt_steps)
        return {c: to_uint8_like_unloader(f) for c, f in made.items()}, keys
    which = {c: [i for i, key in enumerate(keys[c]) if key not in reuse.fakes] for c in classes}
    made = generate(model, ds, classes, sel, seed=seed, adapt_steps=adapt_steps, which=which)
    for c, f in made.items():
        for i, img in zip(which[c], to_uint8_like_unloader(f)):
            reuse.fakes[keys[c][i]] = img
    return {c: torch.stack([reuse.fakes[key] for key in keys[c]]) for c in classes}, keys


def _lpips_input(u8: torch.Tensor) -> torch.Tensor:
    """uint8 [N, C, H, W] -> what main_metric.py's LPIPS() feeds the network: 32 x 32 (cv2 INTER_LINEAR,
    emulated), ``im2tensor`` to [-1, 1]; the caller passes ``normalize=True`` as the script does."""
    x = u8.float()
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)  # lpips.load_image reads RGB
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False, antialias=False).round().clamp(0, 255)
    return x / (255.0 / 2.0) - 1.0


@torch.no_grad()
def lpips_like_lofgan(model: Callable, fakes_u8: dict[int, torch.Tensor], batch: int = 512) -> list[float]:
    """main_metric.py's LPIPS: per class, the mean over every pair i < j of its fakes; one value per class.

    ``model``: an ``lpips.LPIPS`` (VGG in LoFGAN). ``fakes_u8``: class -> uint8 [n, C, H, W].
    """
    per_class = []
    for c, u8 in fakes_u8.items():
        x = _lpips_input(u8)
        i, j = np.triu_indices(len(x), k=1)
        vals = []
        for s in range(0, len(i), batch):
            ii, jj = torch.as_tensor(i[s:s + batch]), torch.as_tensor(j[s:s + batch])
            vals.append(model(x[ii], x[jj], normalize=True).flatten().double())
        per_class.append(float(torch.cat(vals).mean()))
    return per_class


def _antialias_299(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=(299, 299), mode="bicubic", align_corners=False, antialias=True).clamp(-1, 1)


def _features(features: Any, u8: torch.Tensor, resize: str) -> np.ndarray:
    x = u8.float() / 127.5 - 1.0  # the same [-1, 1] range our feature extractors take
    if resize == "antialias":
        x = torch.cat([_antialias_299(x[s:s + 64]) for s in range(0, len(x), 64)])
    return features(x)


def _real_features(features: Any, ds: Any, indices: np.ndarray, resize: str, reuse: Reuse | None) -> np.ndarray:
    """Features [len(indices), dim] of dataset images ``indices`` (repeats allowed: ``draw128`` draws ~10 images
    128 times), each distinct image through the network once (and once per ``reuse``)."""
    cache = reuse.real_features if reuse is not None else {}
    key = (id(features), resize)
    todo = [int(i) for i in dict.fromkeys(int(i) for i in indices) if key + (int(i),) not in cache]
    if todo:
        for i, f in zip(todo, _features(features, ds.images[torch.as_tensor(todo)], resize)):
            cache[key + (i,)] = f
    return np.stack([cache[key + (int(i),)] for i in indices])


def shot_indices(ds: Any, classes: list[int], sel: Selection) -> dict[int, list[int]]:
    """class -> the dataset indices of its fakes' support images, fake after fake (``fakes * shots`` ints): the
    per-class shot list of the comparability record (``comparability.comparability_record``'s ``shot_indices``)."""
    return {int(c): [int(i) for i in np.asarray(ds.class_indices(c))[sel.support[k]].reshape(-1)]
            for k, c in enumerate(classes)}


def shot_indices_sha256(ds: Any, classes: list[int], sel: Selection) -> str:
    """sha256 over every class's support indices (dataset indices, in class and fake order), as hex."""
    payload = {str(c): np.asarray(ds.class_indices(c))[sel.support[k]].tolist() for k, c in enumerate(classes)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


@dataclass
class LofganResult:
    metrics: dict[str, float]
    per_class: dict[str, list[float]]
    classes: list[int]
    variant: Variant
    drawn_seed: int
    shot_sha256: str
    shot_indices: dict[int, list[int]]  # class -> support dataset indices, fake after fake (``shot_indices``)
    comparable: bool
    notes: list[str]
    not_computed: dict[str, str]


def evaluate_lofgan(model: Any, ds: Any, classes: list[int], features: Any, variant: Variant, *, num: int,
                    eval_seed: int | None = None, adapt_steps: int | None = None, lpips_model: Callable | None = None,
                    progress: bool = True, reuse: Reuse | None = None) -> LofganResult:
    """Score ``model`` with LoFGAN's procedure on ``classes`` (the unseen classes, in index order).

    ``num``: the conditioning pool per class; ``eval_seed``: overrides a seeded variant's seed (None keeps it;
    ignored for an unseeded variant, which draws one); ``features``: a ``features.Features`` (``inception`` is
    the published feature space); ``lpips_model``: an ``lpips.LPIPS`` network or None.

    Metrics (kind = ``features.kind``): ``lofgan_fid_{kind}`` (pooled fakes vs the reals, or with ``fid=per-class``
    the mean of per-class FIDs), ``lofgan_fid_{kind}_per_class`` always beside it; ``lofgan_lpips`` (LoFGAN's
    all-pairs LPIPS, with ``lpips_model``) else ``lofgan_diversity_{kind}`` (mean pairwise feature distance,
    ``metrics.diversity``: NOT LPIPS); ``lofgan_n_fakes``, ``lofgan_n_reals``, ``lofgan_comparable`` (1 only with
    Inception features); per class lists for the per-class metrics.

    ``reuse``: fakes, real-image features and LPIPS values already computed for this model and dataset by
    other evaluations (:class:`Reuse`); the numbers equal a fresh evaluation's within float tolerance (the
    batches the feature networks see differ).
    """
    classes = [int(c) for c in classes]
    if variant.resize == "antialias" and features.kind != "inception":
        raise UserError(f"--variant resize=antialias resizes to Inception's 299 px; the features here are "
                        f"{features.kind}: drop resize=antialias or pass --inception-weights")
    n_images = {len(ds.class_indices(c)) for c in classes}
    if len(n_images) != 1:
        raise UserError(f"LoFGAN protocol: the unseen classes hold {sorted(n_images)} images; it needs one count "
                        "per class (the .npy layout): use a .npy benchmark dataset")
    n_images = n_images.pop()
    if variant.seed is None:
        drawn = int(np.random.SeedSequence().generate_state(1)[0] & 0x7FFFFFFF)  # fresh OS entropy, recorded
    else:
        drawn = int(variant.seed if eval_seed is None else eval_seed)
    rng = np.random.RandomState(drawn)
    sel = select(len(classes), n_images, num, variant, rng)
    kind = features.kind
    say = (lambda m: print(f"[lofgan] {m}", file=sys.stderr, flush=True)) if progress else (lambda m: None)
    say(f"{len(classes)} classes x {n_images} images, pool {num}, {variant.fakes} fakes/class from "
        f"{variant.shots} shots, seed {drawn}{' (drawn: unseeded variant)' if variant.seed is None else ''}")
    fakes_u8, fake_keys = fakes_uint8(model, ds, classes, sel, seed=drawn, adapt_steps=adapt_steps, reuse=reuse)
    reals_idx = {c: np.asarray(ds.class_indices(c))[sel.reals[k]] for k, c in enumerate(classes)}
    metrics: dict[str, float] = {}
    not_computed: dict[str, str] = {}
    per_class: dict[str, list[float]] = {}
    ff = {c: _features(features, fakes_u8[c], variant.resize) for c in classes}
    rf = {c: _real_features(features, ds, reals_idx[c], variant.resize, reuse) for c in classes}

    def fid_of(a: np.ndarray, b: np.ndarray, name: str) -> float:
        try:
            return M.fid(a, b)
        except M.MetricNotComputed as e:
            not_computed.setdefault(name, e.reason)
            return math.nan

    pooled = fid_of(np.concatenate([ff[c] for c in classes]), np.concatenate([rf[c] for c in classes]),
                    f"lofgan_fid_{kind}")
    pcs = [fid_of(ff[c], rf[c], f"lofgan_fid_{kind}_per_class") for c in classes]
    per_class[f"lofgan_fid_{kind}_per_class"] = pcs
    metrics[f"lofgan_fid_{kind}_per_class"] = float(np.mean(pcs)) if pcs else math.nan
    metrics[f"lofgan_fid_{kind}"] = pooled if variant.fid == "pooled" else metrics[f"lofgan_fid_{kind}_per_class"]
    if lpips_model is not None:
        known = reuse.lpips if reuse is not None else {}
        todo = {c: fakes_u8[c] for c in classes if tuple(fake_keys[c]) not in known}
        known.update({tuple(fake_keys[c]): v for c, v in zip(todo, lpips_like_lofgan(lpips_model, todo))})
        vals = [known[tuple(fake_keys[c])] for c in classes]
        per_class["lofgan_lpips"] = vals
        metrics["lofgan_lpips"] = float(np.mean(vals))
    else:
        vals = M.diversity_per_class([ff[c] for c in classes])
        per_class[f"lofgan_diversity_{kind}"] = vals
        metrics[f"lofgan_diversity_{kind}"] = float(np.mean(vals))
    metrics["lofgan_n_fakes"] = float(sum(len(f) for f in fakes_u8.values()))
    metrics["lofgan_n_reals"] = float(sum(len(r) for r in reals_idx.values()))
    comparable = kind == "inception" and not getattr(features, "random_init", False)
    metrics["lofgan_comparable"] = float(comparable)
    for name in list(metrics):
        if name in not_computed and math.isnan(metrics[name]):
            metrics[f"{name}_computed"] = 0.0
    notes = []
    if not comparable:
        notes.append(f"features are {kind}{' (random-init Inception)' if kind == 'inception' else ''}, not the "
                     f"FID Inception network's: this number is NOT comparable with published LoFGAN-protocol numbers")
    if lpips_model is None:
        notes.append(f"no LPIPS VGG weights (--lpips-weights): lofgan_diversity_{kind} is the mean pairwise "
                     f"feature distance, not LPIPS")
    for n in notes:
        say(n)
    return LofganResult(metrics=metrics, per_class=per_class, classes=classes, variant=variant, drawn_seed=drawn,
                        shot_sha256=shot_indices_sha256(ds, classes, sel),
                        shot_indices=shot_indices(ds, classes, sel), comparable=comparable, notes=notes,
                        not_computed=not_computed)


def pool_size(dataset: str, variant: Variant) -> int:
    """``num``: the variant's ``pool``, else the benchmark's (its declaration's ``npy``), else 10 (Flowers')."""
    from orchestrator.data import registry

    if variant.pool is not None:
        return int(variant.pool)
    spec = registry.find(dataset)
    return spec.npy.n_pool if spec is not None and spec.npy is not None else 10


def lofgan_lpips_model(weights: str | os.PathLike | None) -> Callable | None:
    """LoFGAN's ``lpips.LPIPS(net='vgg')`` from a local VGG16 backbone file (``LpipsDiversity``'s loader), or None.

    Raises UserError when the file is not VGG16 (LoFGAN's LPIPS is VGG; another backbone is another metric).
    """
    if not weights:
        return None
    from orchestrator.evaluation.lpips_diversity import LpipsDiversity

    scorer = LpipsDiversity(weights)
    if scorer.net_name != "vgg":
        raise UserError(f"--lpips-weights {weights}: a {scorer.net_name} backbone; LoFGAN's LPIPS is VGG16: pass "
                        "torchvision's vgg16 ImageNet weights (vgg16-397923af.pth)")
    return scorer.model
