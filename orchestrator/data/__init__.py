"""Class-indexed datasets, seeded base/val/novel splits, and a stateless episodic sampler."""
from orchestrator.data.datasets import DATASET_NAMES, ClassDataset, load_dataset
from orchestrator.data.sampler import TaskSampler, check_class_sizes
from orchestrator.data.splits import Split, make_split

__all__ = ["ClassDataset", "load_dataset", "DATASET_NAMES", "Split", "make_split", "TaskSampler", "check_class_sizes"]
