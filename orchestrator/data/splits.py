"""Seeded, persisted base / val / novel class splits.

Why whole groups: a method must be judged on classes it never saw, and for Omniglot "never saw"
conventionally means whole alphabets (characters of one alphabet share strokes). So the split is
drawn over ``ClassDataset.class_groups`` (the alphabet for Omniglot, the class itself elsewhere)
and every class of a group lands in the same part. The split stores every class name so a saved
JSON file says what it held out without the dataset at hand.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from orchestrator.data import registry
from orchestrator.data.datasets import ClassDataset
from orchestrator.errors import UserError

PARTS = ("base", "val", "novel")


@dataclass
class Split:
    """Class indices of each part (disjoint, sorted) plus every class name (index -> name)."""

    dataset: str
    seed: int
    base: list[int]
    val: list[int]
    novel: list[int]
    class_names: list[str]

    def __post_init__(self) -> None:
        for part in PARTS:
            setattr(self, part, sorted(int(c) for c in getattr(self, part)))
        seen: set[int] = set()
        for part in PARTS:
            ids = set(getattr(self, part))
            bad = [c for c in ids if not 0 <= c < len(self.class_names)]
            if bad or ids & seen or len(ids) != len(getattr(self, part)):
                raise UserError(f"split for {self.dataset!r} is inconsistent ({part} has classes out of range or shared "
                                f"with another part): delete the split file and let it be drawn again")
            seen |= ids

    def names(self, part: str) -> list[str]:
        """Class names of one part (``base``, ``val`` or ``novel``)."""
        if part not in PARTS:
            raise ValueError(f"unknown split part {part!r}; expected one of {PARTS}")
        return [self.class_names[c] for c in getattr(self, part)]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Split":
        try:
            return cls(dataset=str(d["dataset"]), seed=int(d["seed"]), base=list(d["base"]), val=list(d["val"]),
                       novel=list(d["novel"]), class_names=[str(n) for n in d["class_names"]])
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"split is missing or has a bad field ({e}): delete the split file and let it be drawn again") from None

    def save(self, path: str | Path) -> None:
        """Write as JSON (human-readable; logged as an MLflow artifact with every run)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Split":
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"cannot read split file {path} ({e}): fix or delete it") from None
        return cls.from_dict(d)


def make_split(ds: ClassDataset, seed: int = 0, n_val: int | None = None, n_novel: int | None = None) -> Split:
    """Draw a split over whole groups from ``seed`` (same seed, same split).

    Defaults, in groups, are the dataset's declaration's ``split`` (``data/registry.py``): omniglot 2 novel
    + 1 val alphabets, or, when the dataset has ``default_novel_groups`` (the evaluation alphabets; a
    ``.npy`` benchmark's published unseen classes) and ``n_novel`` is None, those as novel and ``n_val`` (1)
    drawn from the rest as val; mnist / fashion-mnist 3 novel + 1 val classes, 6 base (FIGR held out one
    digit, but then ``class_hit`` is chance by construction and IS / Mode Score see one class; three novel
    classes make class-specificity measurable); digits 2 novel + 1 val; folder (no declared ``split``) and
    any undeclared name ~20% novel, ~10% val, at least 1 each.
    At least one group stays base. An explicit ``n_val`` / ``n_novel`` overrides the default.

    Raises:
        UserError: negative counts, or too few groups for val + novel + one base group.
    """
    groups = sorted(set(ds.class_groups))
    members = {g: [c for c, cg in enumerate(ds.class_groups) if cg == g] for g in groups}
    spec = registry.find(ds.name)
    unit = ((spec.group_unit if spec is not None else None)
            or ("classes" if groups == sorted(ds.class_names) else "groups"))
    dv, dn = (spec.split if spec is not None and spec.split is not None
              else (max(1, round(0.1 * len(groups))), max(1, round(0.2 * len(groups)))))
    n_val = dv if n_val is None else int(n_val)
    rng = np.random.default_rng([int(seed) % 2**64, 0x5917])  # tagged: not the sampler's stream
    fixed_novel = ds.default_novel_groups if n_novel is None else None
    if fixed_novel:
        unknown = sorted(set(fixed_novel) - set(groups))
        if unknown:
            raise ValueError(f"default_novel_groups not among the dataset's groups: {unknown}")
        novel_g = sorted(fixed_novel)
        rest = [g for g in groups if g not in set(novel_g)]
    else:
        n_novel = dn if n_novel is None else int(n_novel)
        novel_g, rest = [], groups
    if n_val < 0 or (n_novel is not None and n_novel < 0):
        raise UserError(f"split sizes must be non-negative (val {n_val}, novel {n_novel}): pass counts of 0 or more")
    need = n_val + (0 if fixed_novel else n_novel) + 1
    if len(rest) < need:
        raise UserError(f"{ds.name} has {len(groups)} {unit}, too few for {n_val} val + "
                        f"{len(novel_g) or n_novel} novel + at least 1 base: ask for fewer val/novel {unit} "
                        f"or use a dataset with more")
    order = [rest[i] for i in rng.permutation(len(rest))]
    if not fixed_novel:
        novel_g, order = order[:n_novel], order[n_novel:]
    val_g, base_g = order[:n_val], order[n_val:]

    def classes(gs: list[str]) -> list[int]:
        return sorted(c for g in gs for c in members[g])

    return Split(dataset=ds.name, seed=int(seed), base=classes(base_g), val=classes(val_g), novel=classes(novel_g),
                 class_names=list(ds.class_names))
