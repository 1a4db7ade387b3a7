"""`evaluate --protocol lofgan` selects what LoFGAN's main_metric.py selects, on a synthetic .npy dataset.

The transcriptions below copy main_metric.py's selection lines (edward3862/LoFGAN-pytorch; line numbers of
HEAD ed6c4a8 unless said otherwise), with ``data`` the array of image ids and the file writes replaced by
collecting the ids the script would write or feed to its generator.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from orchestrator.data import NPY_BENCHMARKS, load_dataset, make_split
from orchestrator.errors import UserError
from orchestrator.evaluation import lofgan
from orchestrator.evaluation.features import Features

N_CLASSES, N_IMAGES, SIDE = 88, 20, 8  # Flowers' index: unseen classes [85:] -> 3 classes


def _array() -> np.ndarray:
    """classes x images x H x W x 3 uint8; image (c, i) has id c * 100 + i in pixel [0, 0, 0] and [0, 0, 1], noise elsewhere."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(N_CLASSES, N_IMAGES, SIDE, SIDE, 3), dtype=np.uint8)
    ids = np.arange(N_CLASSES)[:, None] * 100 + np.arange(N_IMAGES)[None, :]
    x[:, :, 0, 0, 0], x[:, :, 0, 0, 1] = ids // 256, ids % 256
    return x


def _ids(images: np.ndarray) -> np.ndarray:
    return images[..., 0, 0, 0].astype(np.int64) * 256 + images[..., 0, 0, 1]


def transcription(data: np.ndarray, seed: int | None, permute: bool, reals_drawn: bool, n_sample_test: int = 3,
                  n_fakes: int = 128):
    """main_metric.py's selection for args.dataset == 'flower', returning the ids it uses."""
    if seed is not None:
        np.random.seed(seed)  # 51620ad lines 78-82 (SEED = 0); HEAD comments them out (lines 79-83)
    data = data[85:]  # lines 98-100
    num = 10
    if permute:  # lines 108-109 (HEAD, ae230eb, F2DGAN)
        per = np.random.permutation(data.shape[1])
        data = data[:, per, :, :, :]
    data_for_gen = data[:, :num, :, :, :]  # line 111
    data_for_fid = data[:, num:, :, :, :]  # line 112
    reals = []
    if reals_drawn:  # lines 125-133
        for cls in range(data_for_fid.shape[0]):
            row = []
            for i in range(128):
                idx = np.random.choice(data_for_fid.shape[1], 1)
                real_img = data_for_fid[cls, idx, :, :, :][0]
                row.append(_ids(real_img))
            reals.append(row)
    else:  # 51620ad lines 37-46: every real once
        for cls in range(data_for_fid.shape[0]):
            reals.append([_ids(data_for_fid[cls, i]) for i in range(data_for_fid.shape[1])])
    support = []
    for cls in range(data_for_gen.shape[0]):  # lines 144-147 (the script's 128, or n_fakes)
        row = []
        for i in range(n_fakes):
            idx = np.random.choice(data_for_gen.shape[1], n_sample_test)
            imgs = data_for_gen[cls, idx, :, :, :]
            row.append(_ids(imgs))
        support.append(row)
    return _ids(data_for_gen), np.array(reals), np.array(support)


class MeanOfShots:
    """A stand-in generator: the sample is the mean of the support images (so a fake names its triple), shifted
    by a seeded draw of ``sample``'s seed (so a fake also depends on its seeds); ``adapted`` counts adaptations."""

    def __init__(self, noise: float = 0.0):
        self.noise, self.adapted = noise, 0

    def adapt(self, shots, seed, steps=None):
        self.adapted += 1
        mean, noise = shots.mean(0, keepdim=True), self.noise

        def sample(_, n, seed):
            shift = torch.rand(n, 1, 1, 1, generator=torch.Generator().manual_seed(seed)) * noise
            return (mean.repeat(n, 1, 1, 1) + shift).clamp(-1, 1)
        return type("S", (), {"sample": sample})()


class SmallFeatures(Features):
    def __init__(self, kind: str = "domain"):
        torch.manual_seed(0)
        # any side (an "inception" kind sees 299 px after resize=antialias): pooled to 4 x 4 first
        net = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(3 * 16, 12))
        super().__init__(kind, 12, net, lambda x: x, description=f"test: random linear 12-d ({kind})")


@pytest.fixture(scope="module")
def npy(tmp_path_factory):
    arr = _array()
    path = tmp_path_factory.mktemp("npy") / NPY_BENCHMARKS["flowers-npy"].file
    np.save(path, arr)
    ds = load_dataset("flowers-npy", path, image_size=SIDE, channels=3)
    return arr, ds, make_split(ds, seed=0)


@pytest.mark.parametrize("preset,seed", [("seeded", 0), ("seeded", 7), ("f2dgan", 0), ("published", 3)])
def test_selection_equals_main_metric_transcription(npy, preset, seed):
    arr, ds, split = npy
    assert split.novel == [85, 86, 87]
    v = lofgan.parse_variant(f"preset={preset},seed={seed}")
    p = lofgan.PRESETS[preset]
    pool_ids, real_ids, support_ids = transcription(arr, seed, p["permute"], p["reals"] == "draw128")
    sel = lofgan.select(len(split.novel), N_IMAGES, lofgan.pool_size("flowers-npy", v), v,
                        np.random.RandomState(seed))
    ids = np.array([[100 * c + i for i in range(N_IMAGES)] for c in split.novel])  # position -> id per class
    k = np.arange(3)[:, None]
    assert np.array_equal(ids[k, sel.pool], pool_ids)  # conditioning pools
    assert np.array_equal(ids[k, sel.reals], real_ids)  # reals (all once, or 128 drawn)
    assert np.array_equal(ids[k[:, :, None], sel.support], support_ids)  # each fake's 3 support images
    # the fakes: fake i of class c is made from exactly the transcription's triple
    fakes = lofgan.generate(MeanOfShots(), ds, split.novel, sel, seed=seed, adapt_steps=None)
    for k_, c in enumerate(split.novel):
        assert fakes[c].shape == (128, 3, SIDE, SIDE)
        for i in (0, 57, 127):
            triple = arr[c, support_ids[k_, i] - 100 * c]  # [3, H, W, C] uint8
            want = torch.from_numpy(triple).permute(0, 3, 1, 2).float().div(127.5).sub(1).mean(0)
            assert torch.allclose(fakes[c][i], want, atol=1e-5)


def test_more_fakes_share_only_the_first_class_draws_with_128():
    """main_metric.py draws class after class (lines 144-146), so with 160 fakes per class only the first class's
    first 128 support triples are those of the 128-fake run; a later class's draws start elsewhere. So the
    sensitivity row ``fakes-more`` may reuse the baseline's fakes of the first class only (``lofgan.Reuse``'s
    key decides it, fake by fake)."""
    arr = _array()
    v128, v160 = (lofgan.parse_variant(f"preset=published,seed=4,fakes={n}") for n in (128, 160))
    s128, s160 = (lofgan.select(3, N_IMAGES, 10, v, np.random.RandomState(4)) for v in (v128, v160))
    _, _, support_ids = transcription(arr, 4, True, True, n_fakes=160)
    ids = np.array([[100 * c + i for i in range(N_IMAGES)] for c in (85, 86, 87)])
    assert np.array_equal(ids[np.arange(3)[:, None, None], s160.support], support_ids)  # 160 is the script's too
    assert np.array_equal(s160.support[0, :128], s128.support[0])
    assert not np.array_equal(s160.support[1, :128], s128.support[1])
    assert not np.array_equal(s160.support[2, :128], s128.support[2])


def test_evaluation_records_variant_hash_and_reproduces_an_unseeded_draw(npy):
    arr, ds, split = npy
    feats = SmallFeatures()
    seeded = lofgan.parse_variant("preset=seeded")
    a = lofgan.evaluate_lofgan(MeanOfShots(), ds, split.novel, feats, seeded, num=10, progress=False)
    b = lofgan.evaluate_lofgan(MeanOfShots(), ds, split.novel, feats, seeded, num=10, progress=False)
    c = lofgan.evaluate_lofgan(MeanOfShots(), ds, split.novel, feats, seeded, num=10, eval_seed=1, progress=False)
    assert a.shot_sha256 == b.shot_sha256 != c.shot_sha256
    assert a.metrics["lofgan_n_fakes"] == 3 * 128 and a.metrics["lofgan_n_reals"] == 3 * 10
    assert a.metrics["lofgan_comparable"] == 0.0 and any("NOT comparable" in n for n in a.notes)
    assert math.isfinite(a.metrics["lofgan_fid_domain"]) and a.metrics["lofgan_fid_domain"] > 0
    assert "lofgan_lpips" not in a.metrics and a.metrics["lofgan_diversity_domain"] > 0  # fallback, named so
    # per-class FID: 128 fakes vs 10 reals in 12-d -> 10 <= 12: refused, never a regularised number
    assert math.isnan(a.metrics["lofgan_fid_domain_per_class"]) and a.metrics["lofgan_fid_domain_per_class_computed"] == 0
    # unseeded: a drawn seed, recorded; the seeded variant with that seed selects the same shots
    pub = lofgan.parse_variant("preset=published")
    u = lofgan.evaluate_lofgan(MeanOfShots(), ds, split.novel, feats, pub, num=10, progress=False)
    again = lofgan.evaluate_lofgan(MeanOfShots(), ds, split.novel, feats, pub, num=10, eval_seed=u.drawn_seed,
                                   progress=False)
    assert u.metrics["lofgan_n_reals"] == 3 * 128
    assert again.shot_sha256 != u.shot_sha256 or again.drawn_seed == u.drawn_seed  # unseeded ignores eval_seed
    fixed = lofgan.parse_variant(f"preset=published,seed={u.drawn_seed}")
    rep = lofgan.evaluate_lofgan(MeanOfShots(), ds, split.novel, feats, fixed, num=10, progress=False)
    assert rep.shot_sha256 == u.shot_sha256
    assert rep.metrics["lofgan_fid_domain"] == pytest.approx(u.metrics["lofgan_fid_domain"], rel=1e-9)
    with pytest.raises(UserError, match="resize=antialias"):  # a 299-px resize is Inception's, not domain features'
        lofgan.evaluate_lofgan(MeanOfShots(), ds, split.novel, feats, lofgan.parse_variant("resize=antialias"),
                               num=10, progress=False)


def test_unloader_quantisation_truncates():
    x = torch.tensor([-1.0, 0.0, 0.999, 1.0, 1.5]).view(1, 1, 1, 5)
    assert lofgan.to_uint8_like_unloader(x).flatten().tolist() == [0, 127, 254, 255, 255]


@pytest.mark.parametrize("text,needle", [("preset=nope", "preset=nope"), ("reals=some", "reals=some"),
                                         ("seed", "not KEY=VALUE"), ("colour=1", "unknown key"),
                                         ("permute=yes", "permute=yes"), ("shots=0", "shots >= 1")])
def test_bad_variant_is_a_user_error(text, needle):
    with pytest.raises(UserError, match=needle):
        lofgan.parse_variant(text)


def test_variant_string_names_every_choice():
    assert lofgan.parse_variant("preset=seeded,fakes=256").describe() == (
        "preset=seeded,seed=0,permute=0,reals=all,pool=benchmark,shots=3,fakes=256,resize=pytorch-fid,fid=pooled")


def _sensitivity_script():
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(
        "protocol_sensitivity", Path(__file__).resolve().parents[1] / "scripts" / "protocol_sensitivity.py")
    ps = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = ps  # its dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(ps)
    return ps


def test_sensitivity_rows_and_table(npy):
    """scripts/protocol_sensitivity.py's rows on the synthetic dataset: every row evaluated per seed, paired
    differences from the baseline; a row identical to the baseline (v1 vs itself) has Δ = 0."""
    ps = _sensitivity_script()
    arr, ds, split = npy
    rows = ps.run_rows(MeanOfShots(), ds, split, "flowers-npy", {"domain": SmallFeatures()}, [0, 1],
                       rows=["lofgan-seeded", "lofgan-published", "lofgan-v1", "shots-k", "fakes-more", "per-class",
                             "inception"], more_fakes=160, progress=False)
    names = [r.name for r in rows]
    assert names == ["lofgan-seeded", "lofgan-published", "lofgan-v1", "shots-k", "fakes-more", "per-class"]
    assert all(len(r.fid) == 2 and len(r.div) == 2 for r in rows)  # the inception row is skipped without features
    base = rows[0]
    assert base.fid[0] != base.fid[1]  # seeds matter
    more = rows[4]
    assert more.fid != base.fid
    table = ps.markdown(rows)
    assert table.count("\n") == len(rows) + 1 and "lofgan_diversity_domain" in table
    m, lo, hi = ps.t_interval([1.0, 2.0, 3.0])
    assert m == 2.0 and lo < 2.0 < hi


def test_sensitivity_reuse_equals_recomputation_and_skips_the_shared_fakes(npy):
    """The rows share the baseline's fakes (per-class, inception, inception-antialias: all of them; fakes-more:
    the first class's first 128) and real images' features; every row's numbers equal a fresh evaluation of its
    variant without any reuse, and only the fakes no earlier row made are generated."""
    from orchestrator.evaluation.features import Features

    class Big(Features):  # 64-d: per-class FIDs of 10 reals are refused in 12-d; use more reals below
        def __init__(self, kind):
            torch.manual_seed(1)
            net = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(12, 4))
            super().__init__(kind, 4, net, lambda x: x, description=f"test: 4-d ({kind})")

    ps = _sensitivity_script()
    arr, ds, split = npy
    feats = {"domain": Big("domain"), "inception": Big("inception")}
    names = ["lofgan-seeded", "per-class", "inception", "inception-antialias", "fakes-more", "lofgan-v1"]
    model = MeanOfShots(noise=0.5)
    rows = ps.run_rows(model, ds, split, "flowers-npy", feats, [0, 3], rows=names, more_fakes=160, progress=False)

    def fakes_of(text: str, s: int) -> set:  # what determines a fake: class, position, support triple (and seed)
        v = lofgan.parse_variant(text)
        sel = lofgan.select(3, N_IMAGES, 10, v, np.random.RandomState(s))
        return {(k, i, tuple(sel.support[k, i])) for k in range(3) for i in range(v.fakes)}

    made = sum(len(fakes_of(f"preset=published,seed={s}", s) | fakes_of(f"preset=published,seed={s},fakes=160", s)
                   | fakes_of(f"preset=seeded,seed={s}", s)) for s in (0, 3))
    assert model.adapted == made  # each distinct fake once: the scoring rows generated nothing
    assert made <= 2 * (3 * 128 + (3 * 160 - 128) + 3 * 128)  # fakes-more took the first class's 128
    specs = {"lofgan-seeded": ("", "domain"), "per-class": (",fid=per-class", "domain"), "inception": ("", "inception"),
             "inception-antialias": (",resize=antialias", "inception"), "fakes-more": (",fakes=160", "domain")}
    for row in rows:
        for k, s in enumerate((0, 3)):
            extra, kind = specs.get(row.name, ("", "domain"))
            preset = "seeded" if row.name == "lofgan-v1" else "published"
            fresh = lofgan.evaluate_lofgan(MeanOfShots(noise=0.5), ds, split.novel, feats[kind],
                                           lofgan.parse_variant(f"preset={preset},seed={s}{extra}"), num=10,
                                           progress=False)
            assert row.fid[k] == pytest.approx(fresh.metrics[f"lofgan_fid_{kind}"], rel=1e-5, abs=1e-9), row.name
            assert row.div[k] == pytest.approx(fresh.metrics[f"lofgan_diversity_{kind}"], rel=1e-5), row.name
    by = {r.name: r for r in rows}
    assert all(math.isfinite(v) for r in rows for v in r.fid)
    assert by["per-class"].fid != by["lofgan-seeded"].fid and by["fakes-more"].fid != by["lofgan-seeded"].fid


MFH_FAST = ["--set", "width=4", "--set", "memory_size=6", "--set", "ci_dim=8", "--set", "cr_dim=8",
            "--set", "eval_every=2", "--set", "select_metric=last", "--set", "val_generate=72",
            "--set", "n_generate=40"]


@pytest.mark.slow  # train + two evaluations through the CLI; the selection and record rules have fast tests above
def test_cli_evaluate_lofgan_records_tags_beside_the_default(tmp_path, ray_local, capfd):
    """A real run (mfh, 4 steps) on a synthetic flowers-npy; `evaluate --protocol lofgan` is a child run whose
    cmp.* tags say how it was measured, and it is told apart from the default protocol's evaluation."""
    from orchestrator import tracking
    from orchestrator.cli import main

    arr = np.random.default_rng(1).integers(0, 256, size=(88, 14, 32, 32, 3), dtype=np.uint8)
    path = tmp_path / "flowers.npy"
    np.save(path, arr)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    assert main(["train", "mfh", "--dataset", "flowers-npy", "--data-root", str(path), "--steps", "4",
                 "--tracking-uri", uri, *MFH_FAST]) == 0
    c = tracking.client(uri)
    parent = [r for r in c.search_runs([c.get_experiment_by_name(tracking.DEFAULT_EXPERIMENT).experiment_id])
              if "evaluates" not in r.data.tags and r.info.status == "FINISHED"][0]
    rid = parent.info.run_id
    assert main(["evaluate", rid, "--protocol", "lofgan", "--variant", "preset=seeded,fakes=16",
                 "--eval-seed", "0", "1", "--tracking-uri", uri]) == 0
    assert main(["evaluate", rid, "--protocol", "lofgan", "--variant", "preset=seeded,fakes=16",
                 "--eval-seed", "2", "--tracking-uri", uri]) == 0
    assert main(["evaluate", rid, "--eval-seed", "2", "--n-generate", "16", "--tracking-uri", uri]) == 0
    children = c.search_runs([parent.info.experiment_id], f"tags.evaluates = '{rid}'")
    lof = sorted([r for r in children if r.data.tags.get("cmp.protocol") == "lofgan"],
                 key=lambda r: r.data.tags["cmp.eval_seeds"])
    default = [r for r in children if r.data.tags.get("cmp.protocol") != "lofgan"]
    assert len(lof) == 2 and len(default) == 1
    t = lof[0].data.tags
    assert t["cmp.protocol_variant"] == ("preset=seeded,seed=0,permute=0,reals=all,pool=benchmark,shots=3,"
                                         "fakes=16,resize=pytorch-fid,fid=pooled")
    assert t["cmp.dataset"] == "flowers-npy" and t["cmp.features"] == "domain" and t["cmp.eval_seeds"] == "0,1"
    assert t["cmp.shots"] == "3" and t["cmp.n_generate"] == "16" and t["lofgan.comparable_with_published"] == "0"
    assert len(t["cmp.shot_indices_sha256"]) == 64
    assert lof[1].data.tags["cmp.shot_indices_sha256"] != t["cmp.shot_indices_sha256"]  # seed 2 draws other shots
    m = lof[0].data.metrics
    assert m["lofgan_n_fakes_seed0"] == 3 * 16 and m["lofgan_n_reals_seed1"] == 3 * 4  # 14 images - pool 10
    assert "lofgan_diversity_domain_mean" in m and "lofgan_diversity_domain_seed1" in m
    assert m["lofgan_fid_domain_computed_seed0"] == 0  # 48 fakes in 64-d: refused (NaN, not logged), never regularised
    record = json.loads(Path(c.download_artifacts(lof[0].info.run_id, "lofgan.json", str(tmp_path))).read_text())
    assert [s["drawn_seed"] for s in record["seeds"]] == [0, 1] and record["classes"] == [85, 86, 87]
    # one record builder for both protocols: the same keys, the same data/split/feature digests (same run, same
    # data), told apart by the protocol, its variant and the shots' hash
    from orchestrator.evaluation.comparability import KEYS, differing_keys, from_tags

    lof_rec, def_rec = from_tags(lof[1].data.tags), from_tags(default[0].data.tags)
    assert set(lof_rec) == set(def_rec) == set(KEYS)
    for key in ("data_digest", "split_sha256", "features_sha256"):
        assert len(lof_rec[key]) == 64 and lof_rec[key] == def_rec[key], key
    assert lof_rec["eval_seeds"] == def_rec["eval_seeds"] == "2" and lof_rec["n_generate"] == def_rec["n_generate"]
    assert {"protocol", "protocol_variant", "shot_indices_sha256"} <= set(differing_keys(lof_rec, def_rec))
    assert json.loads(Path(c.download_artifacts(lof[1].info.run_id, "comparability.json",
                                                str(tmp_path / "cmp"))).read_text()) == lof_rec
    # compare refuses to pair them, naming the protocol
    capfd.readouterr()
    assert main(["compare", "--metric", "class_hit", "--pair", lof[1].info.run_id, default[0].info.run_id,
                 "--out", str(tmp_path / "cmp.png"), "--tracking-uri", uri]) == 2
    err = capfd.readouterr().err
    assert "not comparable" in err and "cmp.protocol (lofgan vs fsig)" in err, err
    # bad input: one line, exit 2, nothing recorded
    assert main(["evaluate", rid, "--protocol", "lofgan", "--variant", "preset=nope", "--tracking-uri", uri]) == 2
    assert main(["evaluate", rid, "--variant", "preset=seeded", "--tracking-uri", uri]) == 2
    assert len(c.search_runs([parent.info.experiment_id], f"tags.evaluates = '{rid}'")) == 3
    # the .npy moved: --data-root works as for the default protocol, checked against the run's recorded digests
    moved = tmp_path / "moved.npy"
    path.rename(moved)
    changed = arr.copy()
    changed[86, 0] ^= 1  # one image of a novel class differs
    np.save(tmp_path / "changed.npy", changed)
    lofgan_argv = ["evaluate", rid, "--protocol", "lofgan", "--variant", "preset=seeded,fakes=16", "--tracking-uri", uri]
    for root, needle in ((None, "--data-root"), (tmp_path / "changed.npy", "novel classes are not the data")):
        capfd.readouterr()
        assert main([*lofgan_argv, *(["--data-root", str(root)] if root else [])]) == 2
        err = capfd.readouterr().err
        assert needle in err and "Traceback" not in err, err
    assert len(c.search_runs([parent.info.experiment_id], f"tags.evaluates = '{rid}'")) == 3
    assert main([*lofgan_argv, "--data-root", str(moved)]) == 0
    (after,) = [r for r in c.search_runs([parent.info.experiment_id], f"tags.evaluates = '{rid}'")
                if r.info.run_id not in {x.info.run_id for x in children}]
    assert after.data.params["data_root"] == str(moved.resolve())
    assert after.data.tags["cmp.data_digest"] == t["cmp.data_digest"]  # the same data, found at its new path
    assert {i.dataset.name: i.dataset.digest for i in after.inputs.dataset_inputs}["flowers-npy/novel"] == \
        {i.dataset.name: i.dataset.digest for i in parent.inputs.dataset_inputs}["flowers-npy/novel"]
