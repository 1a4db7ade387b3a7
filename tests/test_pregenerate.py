"""FinetuneGAN and the actor pool that pre-generates its variants, on a tiny BigGAN saved to tmp (no download).

The restart claim is checked literally: a real ``pregenerate`` process with 2 actors is sent
Ctrl-C midway, then the same command continues in-process, and the Parquet dataset must hold
exactly one row per (image, variant).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from methods.finetunegan import (FinetuneGAN, domain_perceptual, earth_mover, imagenet_perceptual, load_biggan,
                                 save_tiny_biggan, scale_shift_parameters)
from orchestrator import pregenerate as pg
from orchestrator import tracking
from orchestrator.cli import main
from tests.conftest import REPO


@pytest.fixture(scope="module")
def biggan_dir(tmp_path_factory) -> Path:
    return save_tiny_biggan(tmp_path_factory.mktemp("biggan"))


@pytest.mark.numerical
def test_earth_mover_is_zero_for_r_sorted_and_grows_with_a_shift():
    r = torch.randn(1, 64, generator=torch.Generator().manual_seed(0))
    z = r.reshape(-1).sort().values.flip(0).reshape(1, -1)  # r's values, another order
    assert earth_mover(z, r).item() == pytest.approx(0.0, abs=1e-7)
    shifts = [earth_mover(z + c, r).item() for c in (0.1, 0.5, 2.0)]
    assert shifts == pytest.approx([0.1, 0.5, 2.0], rel=1e-5)
    assert earth_mover(torch.zeros(1, 64), r).item() > 0.5  # a point mass is far from N(0, 1)


@pytest.mark.numerical
def test_fit_changes_only_z_and_the_scale_shift_layers(biggan_dir):
    torch.manual_seed(0)
    G = load_biggan(biggan_dir)
    before = {k: v.clone() for k, v in G.state_dict().items()}
    gan = FinetuneGAN(G, {"steps": 8})
    names = {id(p) for p in scale_shift_parameters(G)}
    ss_keys = {k for k, p in G.named_parameters() if id(p) in names}
    assert ss_keys and all(".bn" in k for k in ss_keys)  # BigGANBatchNorm's scale/offset producers
    target = torch.rand(1, 1, 32, 32) * 2 - 1
    fit = gan.fit(target, seed=3)
    after = G.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == ss_keys  # every scale/shift layer moved, nothing else did (not even BN statistics)
    assert not G.training and fit.z.abs().sum() > 0 and len(fit.losses) == 8
    gan.reset()  # the next target starts from the pre-trained layers again
    assert all(torch.equal(before[k], v) for k, v in G.state_dict().items())


@pytest.mark.numerical
def test_variants_are_seeded_and_differ_by_index(biggan_dir):
    gan = FinetuneGAN(load_biggan(biggan_dir), {"steps": 2})
    gan.fit(torch.zeros(3, 32, 32), seed=0)
    a, b = gan.variants(3, seed=5), gan.variants(3, seed=5)
    assert a.shape == (3, 3, 32, 32) and torch.equal(a, b)
    assert not torch.equal(a[0], a[1]) and a.abs().max() <= 1


@pytest.mark.numerical
def test_perceptual_backbones_feed_the_loss(biggan_dir, tmp_path):
    import torchvision

    from orchestrator.evaluation.features import DomainNet

    torch.manual_seed(0)
    resnet = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), resnet)
    net, desc = imagenet_perceptual(resnet)
    assert desc.startswith("resnet18_imagenet:") and len(net(torch.zeros(1, 3, 32, 32))) == 5
    domain = domain_perceptual(DomainNet(1, 5).body, in_channels=1, image_size=16)
    feats = domain(torch.zeros(2, 3, 32, 32))
    assert len(feats) == 3 and feats[0].shape[1:] == (16, 16, 16)  # grey, resized to the CNN's own size
    gan = FinetuneGAN(load_biggan(biggan_dir), {"steps": 1}, perceptual=domain)
    z = torch.zeros(1, gan.z_dim, requires_grad=True)
    terms = gan.loss_terms(gan.generate(z), torch.ones(1, 3, 32, 32), z, torch.randn(1, gan.z_dim))
    assert set(terms) == {"l1", "emd", "perc"} and terms["perc"] > 0
    terms["perc"].backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_shards_are_written_once_and_temp_files_never_count(tmp_path):
    row = {"image_id": 7, "label": 1, "class_name": "a", "variant": 0, "seed": 1, "loss": 0.5, "png": b"x"}
    assert pg.write_shard(tmp_path, 7, [row]) is True
    assert pg.write_shard(tmp_path, 7, [row, {**row, "variant": 1}]) is False  # never a second copy
    (tmp_path / ".part-00000008.parquet.tmp123").write_bytes(b"half a file")
    assert pg.done_ids(tmp_path) == {7}
    assert pg.read_store(tmp_path).num_rows == 1


ARGS = ["--dataset", "omniglot", "--classes", "novel", "--limit", "6", "--variants", "3", "--steps", "60",
        "--set", "lambda_perc=0", "--actors", "2", "--no-progress"]


def test_killed_midway_and_restarted_writes_each_row_once(biggan_dir, data_root, tmp_path, ray_local):
    out, db = tmp_path / "store", f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = [*ARGS, "--data-root", str(data_root / "omniglot"), "--biggan", str(biggan_dir), "--out", str(out),
            "--tracking-uri", db]
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_TMPDIR": str(Path("/tmp") / f"rp{os.getpid()}")}
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "pregenerate", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 900  # the first shard: waited for, the bound only stops a hung command
        while time.time() < deadline and proc.poll() is None and not pg.done_ids(out):
            time.sleep(0.2)
        assert pg.done_ids(out), "no shard written before the deadline: nothing to interrupt midway"
        proc.send_signal(signal.SIGTERM)  # a scheduler's stop (preemption); Ctrl-C takes the same path
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    first = pg.done_ids(out)
    assert proc.returncode == 143, err[-2000:]  # 128 + SIGTERM (orchestrator.interrupt)
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted by SIGTERM") and "run the same command again" in last, err[-2000:]
    assert "Traceback" not in err and "SIGTERM received" not in err and 1 <= len(first) < 6, err[-2000:]

    assert main(["pregenerate", *args]) == 0  # the same command, in-process on the test's Ray
    table = pg.read_store(out)
    pairs = list(zip(table.column("image_id").to_pylist(), table.column("variant").to_pylist()))
    assert len(pairs) == len(set(pairs)) == 6 * 3  # exactly one row per (image, variant)
    assert len(set(table.column("image_id").to_pylist())) == 6
    img = pg.decode_png(table.column("png")[0].as_py())
    assert img.shape == (3, 32, 32) and -1 <= img.min() <= img.max() <= 1

    runs = tracking.client(db).search_runs([tracking.experiment_id(db, tracking.DEFAULT_EXPERIMENT)],
                                           order_by=["attributes.start_time ASC"])
    killed, resumed = runs
    assert killed.info.status == "KILLED" and resumed.info.status == "FINISHED"
    assert killed.data.tags.get("fsig.interrupted") == "true"
    assert resumed.data.metrics["images_skipped"] == len(first)
    assert resumed.data.metrics["images_done"] == 6 - len(first) == resumed.data.metrics["rows_written"] / 3
    assert resumed.data.metrics["images_per_s"] > 0 and resumed.data.tags["perceptual_kind"] == "none"
    arts = {a.path for a in tracking.client(db).list_artifacts(resumed.info.run_id, "samples")}
    assert "samples/originals_and_variants.png" in arts

    # a third run with other settings into the same folder is refused before anything starts
    assert main(["pregenerate", *args, "--variants", "4"]) == 2
