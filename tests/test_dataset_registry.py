"""The dataset registry (orchestrator/data/registry.py): every dataset is one declaration, and every reader of a
dataset fact (the loader, the background, the default split, the data root in errors, the recorded loader, the
--dataset help of every command) reads it; no other module keeps its own list of dataset names.

Nothing is mocked: the declared loaders run on real files (the bundled digits, a tmp folder of PNGs), the
parsers are the commands' own.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from orchestrator import cli
from orchestrator.data import ClassDataset, dataset_background, load_dataset, make_split, registry
from orchestrator.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SPECS = registry.declared()


def _dataset_help(parser) -> str:
    """The ``--dataset`` help of an argparse parser (or of its first sub-command that has one)."""
    for action in parser._actions:
        if "--dataset" in action.option_strings:
            return action.help
    raise AssertionError("no --dataset option")


def _toy(name: str, n_classes: int = 40) -> ClassDataset:
    """A class-indexed dataset of ``n_classes`` classes, two 8x8 images each, under a declared name."""
    labels = np.repeat(np.arange(n_classes), 2)
    return ClassDataset(name=name, images=torch.zeros((len(labels), 1, 8, 8), dtype=torch.uint8), labels=labels,
                        class_names=[f"k{c:02d}" for c in range(n_classes)],
                        class_groups=[f"k{c:02d}" for c in range(n_classes)])


def test_every_command_shows_the_registry_help():
    sub = next(a for a in cli.parser()._actions if a.dest == "command").choices
    helps = {name: _dataset_help(p) for name, p in sub.items() if any("--dataset" in a.option_strings
                                                                      for a in p._actions)}
    assert {"train", "sweep", "pregenerate"} <= set(helps)
    text = registry.help_text()
    assert all(h == text for h in helps.values()), helps
    for s in SPECS:
        assert f"{s.name} ({s.help})" in text


def test_the_default_dataset_is_declared_once_and_read_from_there():
    """The dataset used without --dataset is the registry's DEFAULT: the harness config, pregenerate and the
    --dataset help read it there (they wrote "digits" themselves)."""
    from orchestrator import config

    assert registry.spec(registry.DEFAULT).name == registry.DEFAULT and not registry.spec(registry.DEFAULT).needs_root
    assert config.HARNESS_DEFAULTS["dataset"] == registry.DEFAULT
    assert registry.help_text().endswith(f"(default {registry.DEFAULT})")


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_each_fact_of_a_dataset_comes_from_its_declaration(spec, tmp_path):
    assert registry.spec(spec.name.upper().replace("-", "_")) is spec  # one spelling rule, in the registry
    assert dataset_background(spec.name) == spec.background
    ds = _toy(spec.name)
    split = make_split(ds, seed=3)
    n_val, n_novel = spec.split or (round(0.1 * 40), round(0.2 * 40))
    assert (len(split.val), len(split.novel), len(split.base)) == (n_val, n_novel, 40 - n_val - n_novel)
    # the data root's description (or why none is read) is the declaration's, in the one-line error
    with pytest.raises(UserError) as err:
        load_dataset(spec.name, tmp_path / "missing", image_size=8)
    assert (spec.no_root or spec.root_holds) in str(err.value)
    if spec.needs_root:
        with pytest.raises(UserError, match="needs a data root"):
            load_dataset(spec.name, None, image_size=8)
    # what lifecycle.log_data_input records as the data's loader
    assert spec.recorded() == ("sklearn.datasets.load_digits" if spec.name == "digits"
                               else f"orchestrator.data.load_dataset({spec.name!r})")


def test_the_published_split_is_the_declarations():
    for s in SPECS:
        if s.npy is not None:
            assert s.npy.n_seen > 0 and s.split == (1, 0), s  # novel: the published unseen classes, not drawn


# ------------------------------------------------------------------ adding a dataset is one declaration ----

@pytest.fixture
def declared_toy():
    spec = registry.register(registry.DatasetSpec(
        "toy-pngs", "orchestrator.data.datasets:load_folder", "ten classes of test PNGs",
        "a folder of the toy classes", background="black", split=(2, 3), group_unit="toys", needs_root=True))
    yield spec
    registry._REGISTRY.pop(spec.name)


def test_a_new_declaration_is_read_everywhere(declared_toy, tmp_path):
    for c in range(10):
        (tmp_path / f"class{c}").mkdir()
        for i in range(2):  # transparent pixels: composited on the declared background (black)
            Image.new("LA", (12, 12), (200, 0)).save(tmp_path / f"class{c}" / f"{i}.png")
    ds = load_dataset("TOY_PNGS", tmp_path, image_size=8)
    assert ds.name == "toy-pngs" and ds.num_classes == 10 and int(ds.images.max()) == 0  # black, not white
    split = make_split(ds, seed=0)
    assert (len(split.val), len(split.novel)) == (2, 3)
    with pytest.raises(UserError, match="too few for 9 val.*ask for fewer val/novel toys"):
        make_split(ds, seed=0, n_val=9)
    assert "toy-pngs (ten classes of test PNGs)" in _dataset_help(
        next(a for a in cli.parser()._actions if a.dest == "command").choices["train"])
    with pytest.raises(UserError, match=r"toy-pngs needs a data root \(it is not downloaded\): pass --data-root "
                                        "pointing at a folder of the toy classes"):
        load_dataset("toy-pngs")
    with pytest.raises(ValueError, match="declared twice"):
        registry.register(declared_toy)


# ------------------------------------------------------------------ nothing else lists dataset names ----

def _names_in(node: ast.AST) -> list[str]:
    names = set(registry.names()) | {a for s in SPECS for a in s.aliases}
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and n.value in names]


def test_no_module_keeps_its_own_list_of_dataset_names():
    """Outside data/registry.py no code names a dataset to decide something: no collection literal holding two or
    more names, no comparison with a name, no string listing three or more (a hand-written help line).
    Docstrings and comments may mention datasets; a default (``config.py``'s ``"dataset": "digits"``) is one name."""
    words = sorted(registry.names(), key=len, reverse=True)
    offences = []
    for path in sorted((ROOT / "orchestrator").rglob("*.py")):
        if path == ROOT / "orchestrator" / "data" / "registry.py":
            continue
        tree = ast.parse(path.read_text())
        docstrings = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}
        for node in ast.walk(tree):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, (ast.Tuple, ast.List, ast.Set, ast.Dict)):
                items = (node.keys + node.values) if isinstance(node, ast.Dict) else node.elts
                found = [n for item in items if item is not None for n in _names_in(item)
                         if isinstance(item, ast.Constant)]
                if len(found) >= 2:
                    offences.append(f"{where}: a list of dataset names {found}")
            elif isinstance(node, ast.Compare):
                found = _names_in(ast.Tuple(elts=[node.left, *node.comparators]))
                if found:
                    offences.append(f"{where}: a comparison with dataset name(s) {found}")
            elif (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings):
                text, hits = node.value, 0
                for w in words:  # longest first, so "fashion-mnist" is not also counted as "mnist"
                    if w in text:
                        hits += 1
                        text = text.replace(w, " ")
                if hits >= 3:
                    offences.append(f"{where}: a string listing dataset names {node.value[:60]!r}")
    assert not offences, "\n".join(offences)


def test_the_old_lists_are_gone_and_the_readers_read_the_registry():
    src = {p: (ROOT / "orchestrator" / p).read_text() for p in
           ("data/images.py", "data/splits.py", "data/datasets.py", "lifecycle.py", "cli.py", "sweep.py",
            "pregenerate.py", "evaluation/lofgan.py")}
    for p, text in src.items():
        assert "DATASET_BACKGROUNDS" not in text and "_DEFAULTS = {" not in text, p
        assert "orchestrator.data import registry" in text, f"{p} does not read the dataset registry"


def test_the_help_does_not_import_torch():
    code = ("import sys, orchestrator.cli as c; c.parser(); import orchestrator.data.registry; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
