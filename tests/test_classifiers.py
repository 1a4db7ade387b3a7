"""ProtoNet and MetaIRNet: the equations on hand-checked tensors, the generated-image store, and a real
``train metairnet`` on Omniglot under Ray Train with MLflow on SQLite.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from methods.base import Episode
from methods.metairnet import FusionNet, MetaIRNet
from methods.protonet import ProtoNet, prototype_logits
from orchestrator import classify
from orchestrator import pregenerate as pg
from orchestrator import tracking
from orchestrator.cli import main

TINY = {"width": 8, "n_way": 3, "queries": 2}


@pytest.mark.numerical
def test_protonet_probabilities_match_eq6_by_hand():
    support = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [4.0, 0.0]])  # class 0: (0,0); class 1: mean (3,0)
    labels = torch.tensor([0, 0, 1, 1])  # class 0 prototype (1, 0); class 1 prototype (2, 1)
    query = torch.tensor([[1.0, 1.0]])
    p = prototype_logits(support, labels, query, n_way=2).softmax(1)[0]
    assert p.tolist() == pytest.approx([0.5, 0.5])  # both prototypes at distance 1
    query = torch.tensor([[0.0, 0.0]])  # distances 1 and sqrt(5)
    d0, d1 = 1.0, math.sqrt(5.0)
    p = prototype_logits(support, labels, query, n_way=2).softmax(1)[0]
    expected = [math.exp(-d0) / (math.exp(-d0) + math.exp(-d1)), math.exp(-d1) / (math.exp(-d0) + math.exp(-d1))]
    assert p.tolist() == pytest.approx(expected, rel=1e-6)
    sq = prototype_logits(support, labels, query, n_way=2, distance="sq_euclidean")
    assert sq[0].tolist() == pytest.approx([-1.0, -5.0])  # Snell's / the authors' squared variant


@pytest.mark.numerical
def test_fusion_weights_are_a_3x3_block_map_mixing_cell_by_cell():
    torch.manual_seed(0)
    enc = lambda: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(32 * 32, 4))  # noqa: E731
    fusion = FusionNet(enc(), enc(), 4)
    cells = torch.tensor([-0.5, 0.0, 0.25, 0.5, 1.0, 1.7, 0.1, 0.9, 2.0])  # no squashing: outside [0, 1] kept
    with torch.no_grad():
        fusion.fc.weight.zero_()
        fusion.fc.bias.copy_(cells)
    real, gen = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    fused, w = fusion(real, gen)
    assert w.shape == (2, 1, 32, 32)
    bounds = [(0, 11), (11, 22), (22, 32)]  # nearest upsampling of 3 cells to 32 pixels: 11, 11, 10
    for r, (r0, r1) in enumerate(bounds):
        for c, (c0, c1) in enumerate(bounds):
            cell = w[:, :, r0:r1, c0:c1]
            assert torch.all(cell == cells[3 * r + c])
            wc = cells[3 * r + c]
            assert torch.allclose(fused[:, :, r0:r1, c0:c1], wc * real[:, :, r0:r1, c0:c1]
                                  + (1 - wc) * gen[:, :, r0:r1, c0:c1])


@pytest.mark.numerical
def test_ci95_is_1_96_std_over_root_episodes():
    accs = [1.0, 0.5, 0.75, 0.25, 0.5]
    mean, ci = classify.mean_ci95(accs)
    std = math.sqrt(sum((a - 0.6) ** 2 for a in accs) / 5)  # population std, as stated in the README
    assert mean == pytest.approx(0.6) and ci == pytest.approx(1.96 * std / math.sqrt(5))


def _episode(seed: int, generated: bool = True) -> Episode:
    g = torch.Generator().manual_seed(seed)
    s = torch.rand(3, 1, 1, 16, 16, generator=g) * 2 - 1
    q = s.expand(3, 2, 1, 16, 16) + 0.1 * torch.randn(3, 2, 1, 16, 16, generator=g)
    gen = (s.unsqueeze(2) + 0.3 * torch.randn(3, 1, 2, 1, 16, 16, generator=g)).clamp(-1, 1) if generated else None
    return Episode(support=s, query=q, classes=[0, 1, 2], seed=seed, support_ids=np.arange(3).reshape(3, 1),
                   generated=gen)


@pytest.mark.numerical
def test_metairnet_trains_the_fusion_net_through_the_classifier_loss():
    torch.manual_seed(0)
    model = MetaIRNet({**TINY, "augment": "generated,flip"}, (1, 16, 16))
    before = model.net["fusion"].fc.weight.detach().clone()
    out = model.meta_train_step([_episode(0), _episode(1)])
    assert set(out) >= {"loss", "train_accuracy", "fusion_w_mean"} and out["loss"] > 0
    assert not torch.equal(before, model.net["fusion"].fc.weight)  # eq. 7 reaches F, not only C
    x, y = model.augmented_support(_episode(2), True, torch.Generator())
    assert len(x) == 3 * 2 * 2 and y.tolist() == [0, 1, 2, 0, 1, 2] * 2  # (real + fused) then flipped
    # ProtoNet's augmentations apply at meta-test only: training needs no generated images
    proto = ProtoNet({**TINY, "augment": "generated"}, (1, 16, 16))
    proto.meta_train_step([_episode(0, generated=False)])
    assert proto.logits(_episode(3)).shape == (6, 3)
    with pytest.raises(ValueError):
        proto.logits(_episode(3, generated=False))


def _png(value: int, size: int = 8) -> bytes:
    return pg.encode_png(torch.full((3, size, size), value / 127.5 - 1.0))


def test_store_gives_each_support_image_its_own_variants(tmp_path):
    for image_id in (3, 5, 9):
        rows = [{"image_id": image_id, "label": 0, "class_name": "c", "variant": v, "seed": 0, "loss": 0.0,
                 "png": _png(10 * image_id + v)} for v in range(4)]
        pg.write_shard(tmp_path, image_id, rows)
    store = classify.GeneratedStore.load(tmp_path, (1, 4, 4), wanted={3, 9})
    assert store.variants == 4 and store.missing([3, 5, 9]) == [5]
    drawn = store.draw(np.array([[9], [3]]), n_aug=2, seed=1)  # [N=2, K=1, n_aug=2, 1, 4, 4]
    values = ((drawn + 1) * 127.5).round()[..., 0, 0, 0].squeeze(1)
    assert set(values[0].tolist()) <= {90.0, 91.0, 92.0, 93.0} and set(values[1].tolist()) <= {30.0, 31.0, 32.0, 33.0}
    assert values[0, 0] != values[0, 1]  # distinct variants of one image
    assert torch.equal(drawn, store.draw(np.array([[9], [3]]), n_aug=2, seed=1))


@pytest.mark.numerical
def test_pregenerate_from_a_generator_run_uses_adapt_and_sample():
    import methods

    cfg = {**methods.get("figr").default_config, "width": 8, "adapt_steps": 2}
    model = methods.get("figr")(cfg, (1, 32, 32))
    worker = pg.RunWorker("figr", cfg, model.state_dict(), (1, 32, 32), 10, 1, False)
    item = {"image_id": 4, "label": 1, "class_name": "x", "seed": 7, "image": np.zeros((1, 32, 32), np.uint8)}
    res = worker.process(item, 3)
    assert [r["variant"] for r in res["rows"]] == [0, 1, 2]
    assert pg.decode_png(res["rows"][0]["png"]).shape == (3, 32, 32)


@pytest.fixture(scope="module")
def omniglot_store(data_root, tmp_path_factory):
    """Stand-in variants of every Omniglot image (the image itself and its flip) as one Parquet file,
    so the end-to-end run needs no generator here (pregenerate's own test covers the generator)."""
    from orchestrator.data import load_dataset

    import io

    from PIL import Image

    def png(x: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(x).save(buf, format="PNG")
        return buf.getvalue()

    ds = load_dataset("omniglot", data_root / "omniglot", image_size=32, channels=1)
    out = tmp_path_factory.mktemp("store")
    rows = []
    for i, img in enumerate(ds.images[:, 0].numpy()):
        for v, x in enumerate((img, np.ascontiguousarray(img[:, ::-1]))):
            rows.append({"image_id": i, "label": int(ds.labels[i]), "class_name": "", "variant": v, "seed": 0,
                         "loss": 0.0, "png": png(x)})
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows, schema=pg.SCHEMA()), out / "part-00000000.parquet")
    return out


def test_train_metairnet_on_omniglot_logs_accuracy_and_interval(data_root, omniglot_store, tmp_path, ray_local, capsys):
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    base = ["train", "metairnet", "--dataset", "omniglot", "--data-root", str(data_root / "omniglot"),
            "--tracking-uri", db, "--set", "width=8", "--set", "n_way=3", "--set", "queries=2"]
    # without a store the run is refused before anything is recorded
    assert main([*base, "--steps", "2"]) == 2 and "--set generated=DIR" in capsys.readouterr().err
    code = main([*base, "--steps", "3", "--set", f"generated={omniglot_store}", "--set", "eval_every=2",
                 "--set", "val_episodes=3", "--set", "test_episodes=10", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    run = tracking.get_run(db, out["run_id"])
    m = run.data.metrics
    assert run.info.status == "FINISHED" and run.data.tags["generated_source"] == str(omniglot_store)
    assert 0 <= m["accuracy"] <= 1 and m["accuracy_ci95"] > 0 and m["episodes"] == 10
    assert out["accuracy"] == pytest.approx(m["accuracy"])
    steps = [h.step for h in tracking.client(db).get_metric_history(run.info.run_id, "val_accuracy")]
    assert steps == [2, 3] and "fusion_w_mean" in m
    arts = {a.path for a in tracking.client(db).list_artifacts(run.info.run_id, "samples")}
    assert "samples/novel_episode.png" in arts
    split = tracking.load_json_artifact(db, run.info.run_id, "split.json")
    assert set(split["novel"]).isdisjoint(split["base"] + split["val"])
    # a classifier makes no images: generate on its run is a one-line user error, not a traceback
    shot = tmp_path / "shot.png"
    Image.new("L", (32, 32), 255).save(shot)
    capsys.readouterr()
    assert main(["generate", out["run_id"], "--images", str(shot), "--tracking-uri", db,
                 "--out", str(tmp_path / "g.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert "classifier" in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert not (tmp_path / "g.png").exists()


@pytest.mark.slow  # a whole train run; the classifier path end to end is the metairnet run above
def test_backbone_flags_train_protonet_on_resnet18_with_local_weights(data_root, tmp_path, ray_local, capsys):
    import torchvision

    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    weights = tmp_path / "resnet18.pth"  # stands in for the ImageNet file: same structure, random values
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    base = ["train", "protonet", "--dataset", "omniglot", "--data-root", str(data_root / "omniglot"),
            "--tracking-uri", db, "--steps", "1", "--set", "n_way=3", "--set", "queries=2", "--set", "eval_every=1",
            "--set", "val_episodes=2", "--set", "test_episodes=3", "--json"]
    assert main([*base, "--backbone", "resnet18", "--backbone-weights", str(weights)]) == 0
    run = tracking.get_run(db, json.loads(capsys.readouterr().out.strip().splitlines()[-1])["run_id"])
    assert run.data.params["backbone"] == "resnet18" and run.data.params["backbone_weights"] == str(weights)
    assert run.data.tags["backbone"] == "resnet18"
    # a generator has no backbone: one line, exit 2, nothing recorded
    before = len(tracking.client(db).search_runs([run.info.experiment_id]))
    assert main(["train", "figr", "--backbone", "resnet18", "--tracking-uri", db]) == 2
    assert "protonet" in capsys.readouterr().err
    assert len(tracking.client(db).search_runs([run.info.experiment_id])) == before


def test_metairnet_search_space_loads_against_its_config():
    from pathlib import Path

    from orchestrator import search_space

    space = search_space.load(Path(__file__).resolve().parents[1] / "search_spaces" / "metairnet.yaml",
                              MetaIRNet.default_config)
    assert space.metric == "val_accuracy" and space.mode == "max"
    for augment in space.params["augment"].values:  # every searched value builds a model
        MetaIRNet({**TINY, "augment": augment}, (1, 16, 16))
