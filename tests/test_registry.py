"""The metric registry (orchestrator/evaluation/registry.py): every metric the protocols emit is declared, and
every reader of a metric's direction or range (compare, checkpoint selection, the search-space parser, the
interval bounds, the run note, compare's table) agrees with it, because it reads it.

The protocols run for real: the generator protocol on the bundled digits with the test doubles of
tests/test_evaluation.py (and LPIPS on a seeded random AlexNet), the classification protocol with a real ProtoNet.
"""
from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

import methods
from orchestrator import compare, kinds, search_space, tracking
from orchestrator.data import make_split
from orchestrator.errors import UserError
from orchestrator.evaluation import evaluate_generator, registry
from orchestrator.evaluation.lpips_diversity import LpipsDiversity
from orchestrator.evaluation.stats import metric_bounds
from tests.test_evaluation import Noise, RealImages

ROOT = Path(__file__).resolve().parents[1]
# Names of the declarations whose templates are patterns (no literal stem to expand): examples of each.
PATTERN_EXAMPLES = {"loss": ("loss", "d_loss", "g_loss", "inner_g_loss", "query_d_loss", "diversity_loss"),
                    "mfh_diagnostics": ("mfh_slots_used", "mfh_slot_entropy"),
                    "mtgan_diagnostics": ("mtgan_phase", "mtgan_ss_scale_dev")}


def _stems() -> list[str]:
    """A recorded stem of every declaration: its literal templates expanded, or its examples above."""
    out = []
    for m in registry.declared():
        names = m.names() or PATTERN_EXAMPLES[m.name]
        assert names, m.name
        out += list(names)
    return out


def _variants(stem: str) -> list[str]:
    """The stem as the harness records it: validation, sweep best, controls, flag and replicate forms."""
    m = registry.spec(stem)
    out = [stem, f"val_{stem}", f"best_val_{stem}", f"{stem}_computed", f"{stem}_mean", f"{stem}_ci_low"]
    if m.controls:
        out += [f"{stem}{c}" for c in registry.CONTROLS] + [f"{stem}_real_mean"]
    return out


ALL_NAMES = sorted({v for s in _stems() for v in _variants(s)})


# ------------------------------------------------------------------ the protocols' names are declared ----

@pytest.fixture(scope="module")
def alexnet(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    state = {k: v for k, v in torchvision.models.alexnet(weights=None).state_dict().items()
             if k.startswith("features.")}
    path = tmp_path_factory.mktemp("lpips") / "alexnet-features.pth"
    torch.save(state, path)
    return path


def _assert_declared(names, kind: str) -> None:
    undeclared = []
    for name in names:
        try:
            parsed = registry.parse(name)
        except registry.UnknownMetric:
            undeclared.append(name)
            continue
        assert kind in parsed.metric.kinds, (name, parsed.metric.kinds)
    assert not undeclared, f"emitted but not declared in evaluation/registry.py: {undeclared}"


def test_every_metric_the_generator_protocol_emits_is_declared(digits, dom, alexnet):
    ds, split = digits
    noise = Noise(); noise.shape = ds.image_shape
    # 8 per class: FID is not computed (24 pooled samples for 64 feature dims), so the _computed flags appear too
    res = evaluate_generator(RealImages(ds), lambda: noise, ds, split.novel, dom, shots=2, n_generate=8, seed=1,
                             progress=False, lpips=LpipsDiversity(alexnet))
    m = res.metrics
    assert {"fid_domain_computed", "ssim_shots", "lpips_diversity_real", "inception_score_domain_real",
            "mode_score_domain_shots", "kid_domain_std_scratch", "recall_domain_real", "diverged_unadapted"} <= set(m)
    _assert_declared(m, "generator")
    _assert_declared(res.per_class, "generator")
    # the cheap path of checkpoint selection, as GeneratorKind.validate records it (val_ prefixed)
    cheap = kinds.GeneratorKind().validate(RealImages(ds), ds, split, {"shots": 2, "val_generate": 8, "eval_seed": 0},
                                           dom, 0, None)
    assert "val_fid_domain" in cheap
    _assert_declared(cheap, "generator")
    # the headline metrics keep their feature space: fid_domain is FID, in [0, inf), lower is better
    assert registry.parse("fid_domain").feature == "domain" and registry.mode("fid_domain") == "min"


def test_every_metric_the_classification_protocol_emits_is_declared(digits):
    from orchestrator import config as config_mod

    ds = digits[0]
    split = make_split(ds, seed=0, n_val=2, n_novel=2)  # 2-way episodes on the validation and the novel classes
    cls = methods.get("protonet")
    cfg = config_mod.resolve(cls.default_config, {}, ["n_way=2", "queries=2", "width=8", "val_episodes=3",
                                                      "test_episodes=3"], cls.harness_defaults)
    kind = kinds.kind_of("protonet")
    model = kinds.build_method("protonet", cfg, ds.image_shape, num_classes=ds.num_classes)
    val = kind.validate(model, ds, split, cfg, None, 0, None)
    assert set(val) == {"val_accuracy", "val_accuracy_ci95"}
    _assert_declared(val, "classifier")
    result = kind.evaluate("protonet", cfg, ds, split, model.state_dict(), None, seed=0, n_generate=0)
    assert {"accuracy", "accuracy_ci95", "episodes"} <= set(result.metrics)
    _assert_declared(result.metrics, "classifier")
    assert kinds.higher_is_better(cfg["select_metric"])  # the classifiers' default selection: val_accuracy, max


def test_training_and_diagnostic_names_in_the_code_are_declared():
    """Loss names the methods return, the loop's budget and throughput, and the methods' diagnostics."""
    sources = "\n".join(p.read_text() for p in sorted((ROOT / "methods").glob("*.py")))
    losses = set(re.findall(r'"([a-z0-9_]*loss)"', sources))
    diagnostics = set(re.findall(r'"((?:mfh|mtgan)_[a-z0-9_]+)"\s*:', sources))
    assert {"d_loss", "g_loss"} <= losses and {"mfh_slots_used", "mtgan_phase"} <= diagnostics
    loop = (ROOT / "orchestrator" / "loop.py").read_text()
    budget = set(re.findall(r'"(meta_steps|tasks_seen|images_seen|train_seconds|eval_seconds)"', loop))
    assert len(budget) == 5
    for name in sorted(losses | diagnostics | budget | {"tasks_per_s", "episodes_per_s"}):
        registry.parse(name)
    assert all(registry.mode(n) == "min" for n in losses)  # what compare ranked them by before the registry


# ------------------------------------------------------------------ one direction and range everywhere ----

def _space_mode(metric: str) -> str:
    figr = methods.get("figr").default_config
    space = search_space.parse({"metric": metric, "params": {"inner_lr": {"distribution": "loguniform", "low": 1e-4,
                                                                          "high": 1e-2}}}, "space.yaml", figr)
    return space.mode


@pytest.mark.parametrize("name", ALL_NAMES)
def test_every_reader_agrees_with_the_declaration(name):
    parsed = registry.parse(name)
    direction = parsed.direction
    assert compare.metric_mode(name) == direction
    assert metric_bounds(name) == parsed.bounds
    assert registry.spec(name) is parsed.metric
    if direction is None:
        with pytest.raises(UserError, match="no better direction"):
            kinds.higher_is_better(name)
    else:
        assert kinds.higher_is_better(name) == (direction == "max")
    if parsed.val and not parsed.best:
        if direction is None:
            with pytest.raises(UserError, match="no better direction"):
                _space_mode(name)
        else:
            assert _space_mode(name) == direction


def test_ssim_and_prdc_have_one_direction_everywhere():
    for name in ("ssim", "val_ssim", "ssim_shots", "recall_domain", "val_recall_domain", "precision_inception",
                 "coverage_domain_real", "val_density_domain"):
        assert registry.mode(name) == "max" and compare.metric_mode(name) == "max", name
        assert kinds.higher_is_better(name), name
    assert _space_mode("val_recall_domain") == _space_mode("val_ssim") == "max"
    assert registry.bounds("ssim") == (-1.0, 1.0) and registry.bounds("recall_domain_shots") == (0.0, 1.0)


def test_names_map_to_their_base_and_unknown_names_are_refused():
    p = registry.parse("val_fid_inception_per_class_scratch_computed")
    assert (p.metric.name, p.feature, p.control, p.val, p.flag) == ("fid", "inception", "_scratch", True, True)
    assert p.bounds == (0.0, 1.0) and p.direction is None  # a flag: 0 when not computed, never ranked
    assert registry.parse("class_hit_augmented").control == "_augmented"
    assert registry.parse("kid_domain_std_real").metric.name == "kid_std"  # a spread, not KID
    assert registry.parse("mse_shots_ci_high").replicate == "_ci_high"
    assert registry.bounds("inception_score_domain_shots_mean") == (1.0, math.inf)
    assert registry.bounds("kid_domain") == (-math.inf, math.inf)
    for bad in ("wiggle", "chance_real", "val_", "fid", "accuracy_domain"):
        with pytest.raises(KeyError):
            registry.parse(bad)
        with pytest.raises(UserError, match="not declared"):
            registry.spec(bad)
    assert metric_bounds("wiggle") == (-math.inf, math.inf) and compare.metric_mode("wiggle") is None
    with pytest.raises(UserError, match="not a declared metric"):
        _space_mode("val_wiggle")
    with pytest.raises(UserError, match="not declared"):
        kinds.higher_is_better("val_wiggle")


def test_display_lists_come_from_the_declarations():
    assert tracking.NOTE_HEADLINES == registry.note_headlines()
    assert tracking.NOTE_CONTROLS == registry.CONTROLS and "_augmented" in registry.CONTROLS
    assert compare.TABLE_METRICS == registry.table_columns()
    assert {"fid_domain", "kid_inception", "class_hit", "diversity", "accuracy"} <= set(registry.note_headlines())
    assert {"fid_inception", "class_hit_scratch", "chance", "mse", "ssim"} <= set(registry.table_columns())
    for name in registry.note_headlines() + registry.table_columns():
        registry.parse(name)
    # compare's rows carry every variant of FID and KID, never their val_ or replicate forms
    assert registry.rides_along("fid_domain_per_class_scratch") and registry.rides_along("kid_inception_std")
    assert not registry.rides_along("val_fid_domain") and not registry.rides_along("class_hit")


# ------------------------------------------------------------------ nothing else decides a direction ----

# Code shapes of the rules the registry replaced: token lists of directions and prefix tables of ranges.
FORBIDDEN = [
    (r"\b_(LOWER|HIGHER|BOUNDS)\b", "a direction or range table"),
    (r"""in \w*metric\w* for \w+ in \(\s*["'](fid|kid|class_hit|accuracy|ssim|recall|loss)""", "a direction by token"),
    (r"""startswith\(\(\s*["'](fid_|kid_|class_hit|recall_|coverage_|precision_)""", "a metric family by prefix"),
    (r"""\b(tokens|metric)\b.*\bin \(\s*["'](fid|kid|hit|acc)""", "a direction by token"),
]
READERS = {"higher_is_better": "kinds.py", "metric_mode": "compare.py", "metric_bounds": "stats.py"}


def test_no_direction_or_range_rule_outside_the_registry():
    offences = []
    for path in sorted((ROOT / "orchestrator").rglob("*.py")):
        if path.name == "registry.py":
            continue
        text = path.read_text()
        for pattern, what in FORBIDDEN:
            for match in re.finditer(pattern, text):
                line = text.count("\n", 0, match.start()) + 1
                offences.append(f"{path.relative_to(ROOT)}:{line}: {what}: {match.group(0)!r}")
        for fn, home in READERS.items():
            for match in re.finditer(rf"^def {fn}\(.*?(?=^\S)", text, flags=re.DOTALL | re.MULTILINE):
                if path.name != home:
                    offences.append(f"{path.relative_to(ROOT)}: a second {fn}")
                elif "registry." not in match.group(0):
                    offences.append(f"{path.relative_to(ROOT)}: {fn} does not read the registry")
    assert not offences, "\n".join(offences)


def test_reading_the_registry_does_not_import_torch():
    code = ("import sys; import orchestrator.compare, orchestrator.tracking, orchestrator.evaluation.registry; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
