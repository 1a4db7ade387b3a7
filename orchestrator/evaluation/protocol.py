"""The one few-shot generation protocol, seeded, applied to every method.

LoFGAN-family convention (docs/protocol.md says the full protocol): for every evaluated class a
seeded permutation picks the ``shots`` conditioning images and the class's other images are the
reals; the method adapts on the shots and generates ``n_generate`` images; FID and KID are
pooled over all classes (generated vs reals) in one feature space, standardised with the base
classes' feature statistics, with per-class FID beside the pooled one; class-specificity is the
share of generated images whose nearest class centroid (mean feature of each class's reals) is
their own class; copying is measured by the memorisation figure (share of samples closer to a
shot than the class's real images are) and by precision/recall/density/coverage (Naeem et al.
2020). With ``controls`` the same classes, shots and seeds are also scored for: the unadapted
model (``steps=0``), a randomly initialised model adapted exactly the same way
(``make_scratch``), the shots repeated to the same count (must score as a copy), the shots
through classic seeded augmentation to the same count (``_augmented``: the positive control, new
class-specific images made without learning), and real images (the floor, at the method's sample
sizes). Metrics that cannot be computed are NaN and flagged,
a model with NaN samples is scored as diverged; per-class values feed ``stats.bootstrap_ci``.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from methods.augment import augment
from orchestrator.errors import UserError
from orchestrator.evaluation import metrics as M
from orchestrator.evaluation.features import Features

GRID_CLASSES = 8  # rows in the sample grid
GRID_SAMPLES = 8  # generated images per row, after the shots
KEEP_GENERATED = 4  # classes whose generated images are kept on the result


@dataclass
class EvalResult:
    """One evaluation's numbers and images.

    ``metrics``: name -> float (NaN = not computed, with ``<name>_computed`` = 0 beside it);
    ``grid``: [rows*(shots+8), C, H, W] in [-1, 1], ``grid_nrow`` per row;
    ``per_class``: metric name -> one float per evaluated class, in ``classes`` order (NaN where not
    computed), for the metrics whose headline is the unweighted mean over classes (see
    :func:`evaluate_generator`); empty for results without per-class values (e.g. classifiers);
    ``classes``: the evaluated classes, in the order of every ``per_class`` list;
    ``not_computed``: metric name -> the one-line reason it is NaN.
    """

    metrics: dict[str, float]
    grid: torch.Tensor
    grid_nrow: int
    generated_per_class: dict[int, torch.Tensor] = field(default_factory=dict)
    shot_indices: dict[int, list[int]] = field(default_factory=dict)
    feature_kind: str = ""
    feature_description: str = ""
    figures: dict[str, tuple[torch.Tensor, int]] = field(default_factory=dict)  # the method's diagnostics
    per_class: dict[str, list[float]] = field(default_factory=dict)
    classes: list[int] = field(default_factory=list)
    not_computed: dict[str, str] = field(default_factory=dict)


def split_shots(ds: Any, c: int, shots: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Dataset indices of class ``c``'s conditioning shots and of its reals (all its other images).

    The permutation is ``np.random.default_rng([seed, c]).permutation`` over the class's images
    (``ds.class_indices(c)``, sorted), so it depends only on (seed, class), not on which other
    classes are evaluated or in which order.
    """
    idx = np.asarray(ds.class_indices(c))
    if shots < 1 or len(idx) < shots + 1:
        raise UserError(f"class {c} ({ds.class_names[c]}) has {len(idx)} images; evaluation with {shots} shots "
                        f"needs at least {shots + 1} (the shots + a real image): lower --set shots (>= 1) "
                        "or use other classes")
    perm = np.random.default_rng([seed, int(c)]).permutation(len(idx))
    return idx[perm[:shots]], idx[perm[shots:]]


def _derived_seed(seed: int, c: int, purpose: int) -> int:
    """A 31-bit seed for (eval seed, class, purpose); identical for the method and its controls."""
    return int(np.random.SeedSequence([seed, int(c), purpose]).generate_state(1)[0] & 0x7FFFFFFF)


ADAPT_CHUNK = 16  # classes per ``adapt_many`` call: a method may adapt them as one batch; bounds the samplers held


def _generate_many(model: Any, shots: list[torch.Tensor], classes: list[int], seed: int, n: int, steps: int | None,
                   shape: tuple[int, ...]) -> list[torch.Tensor]:
    """``generate_class`` for several classes through the ``adapt_many`` hook (the same seeds; methods/base.py).

    A model that is not a ``methods.base.Method`` (no ``adapt_many``) adapts class by class."""
    if not hasattr(model, "adapt_many"):
        return [generate_class(model, s, c, seed, n, steps, shape) for s, c in zip(shots, classes)]
    device = getattr(model, "device", None)
    xs = [s.to(device) if device is not None else s for s in shots]
    samplers = model.adapt_many(xs, [_derived_seed(seed, c, 1) for c in classes], steps)
    return [_sample(sampler, c, seed, n, shape, model) for sampler, c in zip(samplers, classes)]


def generate_class(model: Any, shots: torch.Tensor, c: int, seed: int, n: int, steps: int | None,
                   shape: tuple[int, ...]) -> torch.Tensor:
    """The ``n`` images the protocol makes for class ``c`` from ``shots``: ``model.adapt`` (``steps``: None = the
    method's own count, 0 = unadapted) then ``sample``, seeded from (eval ``seed``, class, purpose) exactly as the
    evaluation seeds them, so a figure or script shows the very images that were scored.

    ``shots``: float32 [k, C, H, W] in [-1, 1]; ``shape``: (C, H, W) the samples must have. Returns float32 CPU
    [n, C, H, W] in [-1, 1]. Raises ValueError when the sampler returns another shape."""
    device = getattr(model, "device", None)
    x = shots.to(device) if device is not None else shots
    return _sample(model.adapt(x, seed=_derived_seed(seed, c, 1), steps=steps), c, seed, n, shape, model)


def _sample(sampler: Any, c: int, seed: int, n: int, shape: tuple[int, ...], model: Any) -> torch.Tensor:
    with torch.no_grad():
        fake = sampler.sample(n, seed=_derived_seed(seed, c, 2))
    fake = fake.detach().float().cpu()
    if tuple(fake.shape) != (n, *shape):
        raise ValueError(f"{type(model).__name__}'s sampler returned shape {tuple(fake.shape)}, "
                         f"expected {(n, *shape)}")
    return fake


# generated sets: the method and its image controls
GEN_SUFFIXES = ("", "_unadapted", "_scratch", "_shots", "_augmented")
MODEL_SUFFIXES = ("", "_unadapted", "_scratch")  # sets made by a model (that can diverge)
# The _augmented control's elastic deformation, (alpha, sigma) as fractions of the image side (torchvision's
# ElasticTransform parameters are pixels): on 32 px Omniglot alpha 32 px, sigma 3.2 px, strokes bend by about a
# pixel without breaking; the affine part is methods.augment.geometric's (rotation 15 deg, shear 10 deg, ...).
AUGMENTED_ELASTIC = (1.0, 0.1)
FLOOR_REPLICATES_MAX_DIM = 512  # above this feature dim (Inception: 2048) the real floor uses one bootstrap draw


class _Record:
    """Metrics, per-class values and "not computed" reasons, filled metric by metric (ours).

    ``put`` stores ``fn()``; a :class:`~orchestrator.evaluation.metrics.MetricNotComputed` (or a NaN
    result) becomes NaN with its reason. ``put_per_class`` stores one value per class under ``name``
    in ``per_class`` and their mean as the headline, NaN (not computed) when any class's value is.
    """

    def __init__(self, classes: list[int]):
        self.classes = classes
        self.m: dict[str, float] = {}
        self.per_class: dict[str, list[float]] = {}
        self.not_computed: dict[str, str] = {}

    def fail(self, name: str, reason: str) -> None:
        self.m[name] = math.nan
        self.not_computed[name] = reason

    def put(self, name: str, fn: Callable[[], float]) -> None:
        try:
            value = float(fn())
        except M.MetricNotComputed as err:
            self.fail(name, err.reason)
            return
        if math.isnan(value):
            self.fail(name, "the computation returned NaN")
        else:
            self.m[name] = value

    def put_per_class(self, name: str, fn: Callable[[int], float]) -> None:
        values, reasons = [], []
        for c in self.classes:
            try:
                v = float(fn(c))
            except M.MetricNotComputed as err:
                v = math.nan
                reasons.append(f"class {c}: {err.reason}")
            else:
                if math.isnan(v):
                    reasons.append(f"class {c}: the computation returned NaN")
            values.append(v)
        self.per_class[name] = values
        if reasons:
            self.fail(name, f"not computed for {len(reasons)} of {len(values)} classes ({reasons[0]})")
        else:
            self.m[name] = float(np.mean(values))

    def put_per_class_many(self, names: dict[str, str], fn: Callable[[int], dict[str, float]]) -> None:
        """Like ``put_per_class`` for a function returning several values per class (``names``: key -> metric)."""
        cache: dict[int, dict[str, float] | M.MetricNotComputed] = {}

        def one(key: str) -> Callable[[int], float]:
            def get(c: int) -> float:
                if c not in cache:
                    try:
                        cache[c] = fn(c)
                    except M.MetricNotComputed as err:
                        cache[c] = err
                hit = cache[c]
                if isinstance(hit, M.MetricNotComputed):
                    raise hit
                return hit[key]
            return get

        for key, name in names.items():
            self.put_per_class(name, one(key))


def augmented_control(shots: torch.Tensor, n: int, seed: int, c: int) -> torch.Tensor:
    """The ``_augmented`` control's ``n`` images [n, C, H, W] in [-1, 1] for class ``c`` from its ``shots``.

    ``methods.augment.augment`` (shot i % k for image i: random resized crop, random affine, elastic deformation
    with ``AUGMENTED_ELASTIC``; colour jitter on RGB only, a grey glyph keeps its grey levels; uncovered borders
    take the image's background), seeded by ``_derived_seed(seed, c, 5)``: the same evaluation seed and class
    give the same images whatever else is evaluated."""
    side = min(shots.shape[-2:])
    alpha, sigma = AUGMENTED_ELASTIC
    return augment(shots, n, _derived_seed(seed, c, 5), elastic=(alpha * side, sigma * side), jitter_grey=False)


def _prdc_names(kind: str, suffix: str) -> dict[str, str]:
    return {k: f"{k}_{kind}{suffix}" for k in ("precision", "recall", "density", "coverage")}


def _suffix_names(kind: str, suffix: str, *, controls: bool, probs: bool) -> tuple[list[str], list[str]]:
    """(all metric names, the per-class ones) the protocol reports for one generated set."""
    per_class = [f"class_hit{suffix}", f"fid_{kind}_per_class{suffix}", f"memorized_share{suffix}",
                 f"shot_distance_ratio{suffix}", *_prdc_names(kind, suffix).values()]
    if controls:
        per_class.append(f"diversity{suffix}")
    if controls and suffix == "":
        per_class += ["mse", "ssim"]
    if controls and suffix == "_shots":
        per_class += ["mse_shots", "ssim_shots"]
    pooled = [f"fid_{kind}{suffix}", f"kid_{kind}{suffix}", f"kid_{kind}_std{suffix}"]
    if probs:
        pooled += [f"inception_score_{kind}{suffix}", f"mode_score_{kind}{suffix}"]
    return pooled + per_class, per_class


def evaluate_generator(method: Any, make_scratch: Callable[[], Any] | None, ds: Any, classes: list[int],
                       features: Features, *, shots: int, n_generate: int = 128, seed: int = 0,
                       adapt_steps: int | None = None, controls: bool = True,
                       progress: bool = True, base_classes: list[int] | None = None, memorized_q: float = 0.05,
                       prdc_k: int = 5, floor_replicates: int | None = None,
                       kid_subsets: int = 100,
                       lpips: Callable[[torch.Tensor, int], float] | None = None) -> EvalResult:
    """Score ``method`` on ``classes`` with the one protocol; see the module docstring.

    Arguments beyond the protocol's (shots, n_generate, seed, adapt_steps, controls):
      ``base_classes``: classes whose real images' feature mean/std standardise the features
      (default: ``features.base_classes``, which :func:`get_features` sets to the split's base classes);
      ``memorized_q``: the memorisation rule's quantile (``metrics.memorized_share``);
      ``prdc_k``: PRDC's k nearest neighbours; ``floor_replicates``: bootstrap draws behind the
      ``_real`` FID/KID floor (default 3, or 1 above 512 feature dimensions: each is one more FID);
      ``kid_subsets``: subsets behind KID's spread;
      ``lpips``: an ``evaluation.lpips_diversity.LpipsDiversity`` (from ``--lpips-weights``); None = no LPIPS figure.

    Feature space. FID, KID, PRDC and the memorisation figure are computed on features standardised
    per dimension with the mean and standard deviation of the base classes' real images
    (``Features.base_statistics``), so that no dimension dominates by its scale and the cubic KID kernel
    sees O(1) values: FID is then in units of base-class feature variance (summed over dimensions) and
    KID dimensionless. ``features_standardised`` = 1 says it was done; 0 (no base classes known) means
    raw features, whose numbers are not comparable with standardised ones. class_hit, diversity and
    Inception/Mode Score use the raw features (unchanged definitions).

    Metrics (kind = ``features.kind``, "domain" or "inception"); "suffix" is "" for the method and
    ``_unadapted``, ``_scratch``, ``_shots``, ``_augmented``, ``_real`` for the controls (always last in the name):
      ``fid_{kind}``, ``kid_{kind}``: pooled over classes, generated vs all reals;
      ``kid_{kind}_std``: KID's spread over subsets (``metrics.kid_spread``; subset size ``kid_subset_size``);
      ``fid_{kind}_per_class``: FID of each class's generated vs that class's reals, mean over classes
      (NaN when any class has no more samples than feature dimensions, e.g. Omniglot's 16 reals in 64-d);
      ``class_hit``: share of generated images whose nearest real-class centroid is their class;
      ``memorized_share``: share of generated images closer to a shot than real images of the class are
      (``metrics.memorized_share``; expected ``memorized_nominal`` for images exchangeable with the reals,
      1 for copies), and ``shot_distance_ratio`` (median nearest-shot distance of the generated over the reals');
      ``precision_{kind}``, ``recall_{kind}``, ``density_{kind}``, ``coverage_{kind}`` (Naeem et al. 2020,
      ``metrics.prdc`` with k = ``prdc_k``): per class, generated vs that class's reals, mean over classes;
      ``inception_score_{kind}``, ``mode_score_{kind}`` (MT-GAN eq. 2-3, pooled, from the feature space's
      classifier: the base-class domain classifier or Inception's 1008-way fc; with a domain classifier the
      classes are BASE classes, so on novel images they measure confident, varied base-class predictions,
      not the paper's ImageNet-class IS) when the features have a classifier head;
      ``diverged``: 1 when any generated image has a NaN/inf pixel: the model failed and every metric of
      its set is NaN (not computed), never a number from NaN samples;
      all of the above for the method always (the cheap path, controls=False, used for checkpoint selection
      on validation classes), and for ``_unadapted`` (``adapt(steps=0)``), ``_scratch`` (``make_scratch()``
      adapted with the same shots, seeds and steps; skipped when ``make_scratch`` is None) and ``_shots``
      (the shots repeated to ``n_generate``; ``diverged_*`` for the two model controls) and ``_augmented``
      (the shots through seeded classic augmentation to ``n_generate``, :func:`augmented_control`: the
      positive control, class-specific new images without learning) with controls;
      with controls also ``diversity{suffix}`` (mean pairwise raw-feature distance within a class), ``mse``,
      ``ssim``, ``mse_shots``, ``ssim_shots`` (each generated image vs its nearest real, ``metrics.mse_ssim``).
      With ``lpips``: ``lpips_diversity{suffix}`` (per class, mean LPIPS distance over seeded pairs of distinct
      images, then the mean over classes; in LPIPS units) for the method, and with controls for each control
      and ``lpips_diversity_real`` (the class's reals): the repeated shots score low, copies being at distance 0.
    The ``_real`` control (with controls), the yardstick a generator of real class images would reach:
      ``fid_{kind}_real``, ``kid_{kind}_real``, ``kid_{kind}_std_real``, ``fid_{kind}_per_class_real``: at the
      method's sample sizes: per class ``n_generate`` images drawn with replacement from the class's reals
      against an independent draw of as many images as the class has reals (the bootstrap's stand-in for
      a perfect generator's fresh samples vs fresh reals; KID there leaves out pairs of draws of one image,
      ``metrics.kid_resampled``, and is ≈ 0 up to the noise of these sizes), averaged over
      ``floor_replicates`` draws;
      ``memorized_share_real``: each real scored leave-one-out against the other reals (the rule's rate);
      ``precision_{kind}_real`` ...: each class's reals split in two seeded halves, PRDC of one half against
      the other both ways, averaged (sizes: half the class's reals on each side, not the method's);
      ``class_hit_real`` (pooled over reals: the ceiling in this feature space), ``diversity_real``,
      ``inception_score_{kind}_real``.
    Placement (with controls and ``make_scratch``; :func:`_placement`): for m in class_hit, diversity,
      memorized_share: ``lift_<m>`` (m - m_scratch, per class), ``lift_<m>_augmented`` (m_augmented - m_scratch,
      per class) and ``gap_closed_<m>`` (mean lift / mean augmented lift; not computed when the augmented
      control's lift is not separated from 0).
    Also: ``memorized_nominal`` (mean over classes of the rule's expected share), ``features_standardised``,
    ``kid_subset_size``, ``prdc_k``, ``chance`` (1/len(classes)), ``n_classes``, ``n_generated`` (pooled),
    ``n_per_class``, ``n_reals`` (pooled reals), ``shots``.

    Not computed. A metric that cannot be computed on what it was given (fewer samples than it needs, NaN
    features, an unstable square root: ``metrics.MetricNotComputed``) is NaN in ``metrics``, has
    ``<name>_computed`` = 0 beside it and its reason in ``EvalResult.not_computed``; a computed metric has
    no ``_computed`` entry.

    Per class. ``EvalResult.per_class[name]`` lists the metric's value for each class in ``classes`` order
    (NaN where not computed), for every name listed above as per class: ``class_hit{suffix}``,
    ``fid_{kind}_per_class{suffix}``, ``memorized_share{suffix}``, ``shot_distance_ratio{suffix}``,
    ``{precision,recall,density,coverage}_{kind}{suffix}``, ``diversity{suffix}`` (not ``_real``), ``mse``,
    ``ssim``, ``mse_shots``, ``ssim_shots``, ``lift_<m>``, ``lift_<m>_augmented``. For each of them
    ``metrics[name]`` is the unweighted mean of
    the list (NaN if any entry is NaN), so the lists of several seeds form the [seeds, classes] grid that
    ``stats.bootstrap_ci`` takes. Pooled metrics (FID, KID, IS, Mode Score, ``class_hit_real``) have none.
    """
    classes = [int(c) for c in classes]
    if not classes:
        raise UserError("no classes to evaluate: the split has no classes in this part")
    if n_generate < 2:
        raise UserError(f"n_generate {n_generate}: need at least 2 images per class")
    kind = features.kind
    shape = tuple(ds.image_shape)
    t0 = time.time()

    def say(msg: str) -> None:
        if progress:
            print(f"[eval] {msg}", file=sys.stderr, flush=True)

    n_grid = min(GRID_SAMPLES, n_generate)
    say(f"{len(classes)} classes, {shots} shots, {n_generate} generated per class, {kind} features, seed {seed}, "
        f"controls {'on' if controls else 'off'}")
    scratch = make_scratch() if (controls and make_scratch is not None) else None

    # ---- standardisation statistics (base classes' real images)
    base = base_classes if base_classes is not None else getattr(features, "base_classes", None)
    if base is not None and hasattr(features, "base_statistics"):
        mu, sd = features.base_statistics(ds, base)
        standardised = True
    else:
        mu, sd = None, None
        standardised = False
        say("no base classes known: FID/KID/PRDC/memorisation on raw features (features_standardised = 0)")

    def z(x: np.ndarray) -> np.ndarray:
        return M.standardise(x, mu, sd) if standardised else np.asarray(x, dtype=np.float64)

    real_feats: dict[int, np.ndarray] = {}
    shot_feats: dict[int, np.ndarray] = {}
    gen_feats: dict[str, dict[int, np.ndarray]] = {"": {}}
    if controls:
        gen_feats.update({"_unadapted": {}, "_shots": {}, "_augmented": {}})
        if scratch is not None:
            gen_feats["_scratch"] = {}
    bad_images = {suffix: 0 for suffix in gen_feats}  # generated images with a NaN/inf pixel
    pix: dict[str, list] = {"mse": [], "ssim": [], "mse_shots": [], "ssim_shots": []}
    pix_fail: dict[str, str] = {}
    grid_rows: list[torch.Tensor] = []
    kept: dict[int, torch.Tensor] = {}
    shot_indices: dict[int, list[int]] = {}
    shots_by_class: dict[int, torch.Tensor] = {}
    n_real_imgs: dict[int, int] = {}

    def count_bad(suffix: str, images: torch.Tensor) -> None:
        bad_images[suffix] += int((~torch.isfinite(images.reshape(len(images), -1))).any(1).sum())

    lp_values: dict[str, dict[int, float]] = {}

    def lp(suffix: str, c: int, images: torch.Tensor) -> None:
        if lpips is not None:
            lp_values.setdefault(suffix, {})[c] = lpips(images, _derived_seed(seed, c, 3))

    def pixel_scores(key: str, images: torch.Tensor, reals: torch.Tensor) -> None:
        try:
            mse, ssim = M.mse_ssim(images, reals)
        except M.MetricNotComputed as err:
            mse = ssim = math.nan
            pix_fail.setdefault(key, err.reason)
        pix[key].append(mse); pix[key.replace("mse", "ssim")].append(ssim)

    ahead: dict[str, dict[int, torch.Tensor]] = {}  # the next classes' images, adapted together (adapt_many)
    for i, c in enumerate(classes):
        if i % ADAPT_CHUNK == 0:
            chunk = classes[i:i + ADAPT_CHUNK]
            chunk_shots = [ds.get(split_shots(ds, cc, shots, seed)[0]).float() for cc in chunk]
            for key, model in (("", method), ("_scratch", scratch if controls else None)):
                if model is not None:
                    ahead[key] = dict(zip(chunk, _generate_many(model, chunk_shots, chunk, seed, n_generate,
                                                                adapt_steps, shape)))
        shot_idx, real_idx = split_shots(ds, c, shots, seed)
        shot_indices[c] = [int(j) for j in shot_idx]
        shot_imgs, real_imgs = ds.get(shot_idx).float(), ds.get(real_idx).float()
        shots_by_class[c] = shot_imgs
        n_real_imgs[c] = len(real_idx)
        real_feats[c] = features(real_imgs)
        shot_feats[c] = features(shot_imgs)

        fake = ahead[""].pop(c)
        count_bad("", fake)
        gen_feats[""][c] = features(fake)
        lp("", c, fake)
        if i < GRID_CLASSES:
            grid_rows.append(torch.cat([shot_imgs, fake[:n_grid]]))
        if i < KEEP_GENERATED:
            kept[c] = fake
        if controls:
            pixel_scores("mse", fake, real_imgs)
            unadapted = generate_class(method, shot_imgs, c, seed, n_generate, 0, shape)
            count_bad("_unadapted", unadapted)
            gen_feats["_unadapted"][c] = features(unadapted)
            lp("_unadapted", c, unadapted)
            if scratch is not None:
                fake_scratch = ahead["_scratch"].pop(c)
                count_bad("_scratch", fake_scratch)
                gen_feats["_scratch"][c] = features(fake_scratch)
                lp("_scratch", c, fake_scratch)
            reps = shot_imgs.repeat(math.ceil(n_generate / shots), 1, 1, 1)[:n_generate]
            gen_feats["_shots"][c] = np.tile(shot_feats[c], (math.ceil(n_generate / shots), 1))[:n_generate]
            pixel_scores("mse_shots", reps, real_imgs)
            lp("_shots", c, reps)
            augmented = augmented_control(shot_imgs, n_generate, seed, c)
            gen_feats["_augmented"][c] = features(augmented)
            lp("_augmented", c, augmented)
            lp("_real", c, real_imgs)
        say(f"class {i + 1}/{len(classes)} done ({time.time() - t0:.1f}s)")

    rec = _Record(classes)
    m = rec.m
    real_all = np.concatenate([real_feats[c] for c in classes])
    centroids = np.stack([real_feats[c].mean(0) for c in classes])
    zreal = {c: z(real_feats[c]) for c in classes}
    zshot = {c: z(shot_feats[c]) for c in classes}
    zreal_all = np.concatenate([zreal[c] for c in classes])
    has_head = getattr(features, "head", None) is not None
    real_probs = features.class_probs(real_all) if has_head else None
    n_gen_total = n_generate * len(classes)

    for suffix, gen in gen_feats.items():
        names, per_class_names = _suffix_names(kind, suffix, controls=controls, probs=real_probs is not None)
        if suffix in MODEL_SUFFIXES:
            m[f"diverged{suffix}"] = float(bad_images[suffix] > 0)
        if bad_images[suffix]:
            reason = f"diverged: {bad_images[suffix]} of {n_gen_total} generated images have NaN/inf pixels"
            for name in names:
                rec.fail(name, reason)
                if name in per_class_names:
                    rec.per_class[name] = [math.nan] * len(classes)
            continue
        zgen = {c: z(gen[c]) for c in classes}
        pooled = np.concatenate([zgen[c] for c in classes])
        rec.put(f"fid_{kind}{suffix}", lambda: M.fid(pooled, zreal_all))
        rec.put(f"kid_{kind}{suffix}", lambda: M.kid(pooled, zreal_all))
        rec.put(f"kid_{kind}_std{suffix}", lambda: M.kid_spread(pooled, zreal_all, n_subsets=kid_subsets))
        rec.put(f"class_hit{suffix}", lambda: M.class_hit(gen, centroids))
        rec.per_class[f"class_hit{suffix}"] = _safe_list(lambda: M.class_hit_per_class(gen, centroids), len(classes))
        rec.put_per_class(f"fid_{kind}_per_class{suffix}", lambda c: M.fid(zgen[c], zreal[c]))
        rec.put_per_class(f"memorized_share{suffix}",
                          lambda c: M.memorized_share(zgen[c], zshot[c], zreal[c], q=memorized_q)[0])
        rec.put_per_class(f"shot_distance_ratio{suffix}", lambda c: M.shot_distance_ratio(zgen[c], zshot[c], zreal[c]))
        rec.put_per_class_many(_prdc_names(kind, suffix), lambda c: M.prdc(zreal[c], zgen[c], k=prdc_k))
        if real_probs is not None:
            gen_probs = features.class_probs(np.concatenate([gen[c] for c in classes]))
            rec.put(f"inception_score_{kind}{suffix}", lambda: M.inception_score(gen_probs))
            rec.put(f"mode_score_{kind}{suffix}", lambda: M.mode_score(gen_probs, real_probs))
        if controls:
            rec.put_per_class(f"diversity{suffix}", lambda c: M.diversity_per_class([gen[c]])[0])

    for suffix, values in lp_values.items():
        if bad_images.get(suffix):
            rec.fail(f"lpips_diversity{suffix}", f"diverged: {bad_images[suffix]} generated images have NaN/inf pixels")
            rec.per_class[f"lpips_diversity{suffix}"] = [math.nan] * len(classes)
        else:
            rec.put_per_class(f"lpips_diversity{suffix}", values.__getitem__)

    if controls:
        for key in ("mse", "ssim", "mse_shots", "ssim_shots"):
            suffix = "_shots" if key.endswith("_shots") else ""
            if bad_images[suffix]:
                continue  # failed with the model's other metrics above
            values = pix[key]
            rec.per_class[key] = [float(v) for v in values]
            failed = pix_fail.get(key.replace("ssim", "mse"))
            if failed:
                rec.fail(key, failed)
            else:
                m[key] = float(np.mean(values))
        if real_probs is not None:
            rec.put(f"inception_score_{kind}_real", lambda: M.inception_score(real_probs))
        _real_floor(rec, kind, zreal, classes, n_generate, seed, kid_subsets,
                    floor_replicates if floor_replicates is not None
                    else (3 if features.dim <= FLOOR_REPLICATES_MAX_DIM else 1))
        rec.put_per_class("memorized_share_real",
                          lambda c: M.memorized_share_real(zshot[c], zreal[c], q=memorized_q)[0])
        rec.put_per_class_many(_prdc_names(kind, "_real"), lambda c: _prdc_halves(zreal[c], seed, c, prdc_k))
        rec.put("diversity_real", lambda: M.diversity(real_feats))
        rec.put("class_hit_real", lambda: M.class_hit(real_feats, centroids))  # the ceiling in this feature space

    if controls and scratch is not None:
        _placement(rec, seed)

    m["memorized_nominal"] = float(np.mean([M.memorization_rank(n_real_imgs[c], memorized_q) / (n_real_imgs[c] + 1.0)
                                            for c in classes]))
    m["features_standardised"] = float(standardised)
    m["kid_subset_size"] = float(M.kid_subset_size(n_gen_total, len(real_all)))
    m["prdc_k"] = float(prdc_k)
    m.update({"chance": 1.0 / len(classes), "n_classes": float(len(classes)),
              "n_generated": float(n_gen_total), "n_per_class": float(n_generate),
              "n_reals": float(len(real_all)), "shots": float(shots)})
    for name in rec.not_computed:
        m[f"{name}_computed"] = 0.0
    diag = method.diagnostics(shots_by_class, seed) if hasattr(method, "diagnostics") else None
    if diag is not None:
        clash = set(diag.metrics) & set(m)
        assert not clash, f"{type(method).__name__}.diagnostics reuses protocol metric names: {clash}"
        m.update(diag.metrics)
    m = {k: float(v) for k, v in m.items()}
    if rec.not_computed:
        say("not computed: " + "; ".join(f"{k} ({v})" for k, v in list(rec.not_computed.items())[:6])
            + (f"; ... {len(rec.not_computed) - 6} more" if len(rec.not_computed) > 6 else ""))
    say(f"done in {time.time() - t0:.1f}s: " + ", ".join(
        f"{k}={m[k]:.4g}" for k in (f"fid_{kind}", f"kid_{kind}", "class_hit", f"mode_score_{kind}", "memorized_share",
                                    f"recall_{kind}", f"coverage_{kind}", f"fid_{kind}_scratch", "class_hit_scratch",
                                    f"fid_{kind}_shots", "memorized_share_shots", f"coverage_{kind}_shots") if k in m))
    grid = torch.nan_to_num(torch.cat(grid_rows), nan=0.0, posinf=1.0, neginf=-1.0).clamp(-1, 1)
    return EvalResult(metrics=m, grid=grid, grid_nrow=shots + n_grid,
                      generated_per_class=kept, shot_indices=shot_indices, feature_kind=kind,
                      feature_description=features.description,
                      figures=dict(diag.figures) if diag is not None else {},
                      per_class=rec.per_class, classes=list(classes), not_computed=dict(rec.not_computed))


PLACED = ("class_hit", "diversity", "memorized_share")  # metrics placed between the untrained and augmented controls


def _placement(rec: _Record, seed: int) -> None:
    """Each of ``PLACED`` placed between its controls: ``lift_<m>`` = m - m_scratch per class (the lift over the
    untrained control, paired by class), ``lift_<m>_augmented`` = m_augmented - m_scratch per class (the positive
    control's lift), and ``gap_closed_<m>`` = mean lift / mean augmented lift (the share of the way from the
    untrained to the augmented control the method goes: 0 = untrained, 1 = as far as classic augmentation; > 1
    beyond it), by ``stats.gap_closed``: not computed (NaN, recorded as missing) when the augmented control's lift
    is not separated from 0 (its paired interval over classes, ``stats.lift_ci``, covers 0), is ~0, or is on the
    worse side of 0 (``class_hit``: augmented <= untrained): a share of no gap means nothing."""
    from orchestrator.evaluation.stats import gap_closed, lift_ci

    for base in PLACED:
        scratch = rec.per_class.get(f"{base}_scratch")
        for suffix in ("", "_augmented"):
            values = rec.per_class.get(f"{base}{suffix}")
            if values is None or scratch is None:
                continue
            by_class = {c: v - s for c, v, s in zip(rec.classes, values, scratch)}
            rec.put_per_class(f"lift_{base}{suffix}", by_class.__getitem__)
        name = f"gap_closed_{base}"
        if f"{base}_augmented" not in rec.per_class or scratch is None or f"{base}" not in rec.per_class:
            continue
        aug = lift_ci(np.asarray([rec.per_class[f"{base}_augmented"]]), np.asarray([scratch]), base, seed=seed)
        share, why = gap_closed(rec.m.get(f"lift_{base}"), aug, base)
        if why is not None:
            rec.fail(name, why)
            continue
        rec.put(name, lambda share=share: share)


def _safe_list(fn: Callable[[], list[float]], n: int) -> list[float]:
    try:
        return [float(v) for v in fn()]
    except M.MetricNotComputed:
        return [math.nan] * n


def _prdc_halves(zreal: np.ndarray, seed: int, c: int, k: int) -> dict[str, float]:
    """PRDC of one seeded half of a class's reals against the other, both ways, averaged."""
    perm = np.random.default_rng([seed, int(c), 3]).permutation(len(zreal))
    a, b = zreal[perm[: len(perm) // 2]], zreal[perm[len(perm) // 2:]]
    one, two = M.prdc(a, b, k=k), M.prdc(b, a, k=k)
    return {key: (one[key] + two[key]) / 2.0 for key in one}


def _real_floor(rec: _Record, kind: str, zreal: dict[int, np.ndarray], classes: list[int], n_generate: int,
                seed: int, kid_subsets: int, replicates: int) -> None:
    """FID/KID of real images against real images at the method's sample sizes (the ``_real`` floor).

    Per replicate r and class c (RNG ``[seed, c, 4, r]``): a "generated" set of ``n_generate`` draws with
    replacement from the class's reals and an independent "real" set of as many draws as the class has
    reals: two samples of the reals' empirical distribution at the method's sizes (the bootstrap's
    stand-in for a perfect generator's samples against fresh reals). Pooled FID, per-class FID, and
    pooled KID with its spread (``metrics.kid_resampled``: pairs of draws of one image left out), each
    averaged over ``replicates``. Source: ours (bootstrap principle).
    """
    offsets = np.cumsum([0] + [len(zreal[c]) for c in classes])
    pool = np.concatenate([zreal[c] for c in classes])
    draws = []  # per replicate: {class: (generated row indices, reference row indices)} into pool
    for r in range(max(1, int(replicates))):
        idx = {}
        for i, c in enumerate(classes):
            rng = np.random.default_rng([seed, int(c), 4, r])
            n = len(zreal[c])
            idx[c] = (offsets[i] + rng.integers(0, n, n_generate), offsets[i] + rng.integers(0, n, n))
        draws.append(idx)

    def both(idx: dict[int, tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        return (np.concatenate([idx[c][0] for c in classes]), np.concatenate([idx[c][1] for c in classes]))

    rec.put(f"fid_{kind}_real", lambda: float(np.mean([M.fid(pool[g], pool[f]) for g, f in map(both, draws)])))
    kids: list[tuple[float, float]] = []
    try:
        kids = [M.kid_resampled(pool, g, f, n_subsets=kid_subsets, seed=seed) for g, f in map(both, draws)]
    except M.MetricNotComputed as err:
        rec.fail(f"kid_{kind}_real", err.reason)
        rec.fail(f"kid_{kind}_std_real", err.reason)
    if kids:
        rec.put(f"kid_{kind}_real", lambda: float(np.mean([v for v, _ in kids])))
        rec.put(f"kid_{kind}_std_real", lambda: float(np.mean([s for _, s in kids])))
    rec.put_per_class(f"fid_{kind}_per_class_real",
                      lambda c: float(np.mean([M.fid(pool[idx[c][0]], pool[idx[c][1]]) for idx in draws])))


def save_grid(tensor: torch.Tensor, path: Path | str, nrow: int) -> Path:
    """Write images in [-1, 1] ([N, C, H, W]) as one PNG grid, ``nrow`` images per row."""
    from torchvision.utils import save_image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(tensor.detach().float().cpu(), path, nrow=nrow, normalize=True, value_range=(-1, 1), pad_value=1.0)
    return path


def save_result_images(result: EvalResult, directory: Path | str, grid_name: str, suffix: str = "") -> list[Path]:
    """The sample grid (``grid_name``) and each of the method's diagnostic figures (``<name><suffix>.png``)."""
    directory = Path(directory)
    paths = [save_grid(result.grid, directory / grid_name, nrow=result.grid_nrow)]
    for name, (images, nrow) in result.figures.items():
        paths.append(save_grid(images.clamp(-1, 1), directory / f"{name}{suffix}.png", nrow=nrow))
    return paths
