"""Class-indexed datasets, seeded base/val/novel splits, a stateless episodic sampler, and the image loader."""
from orchestrator.data.datasets import DATASET_NAMES, NPY_BENCHMARKS, ClassDataset, absolute_root, load_dataset
from orchestrator.data.images import DATASET_BACKGROUNDS, dataset_background, load_image, load_images, to_model_mode
from orchestrator.data.sampler import TaskSampler, check_class_sizes, min_eval_images
from orchestrator.data.splits import Split, make_split

__all__ = ["ClassDataset", "load_dataset", "absolute_root", "DATASET_NAMES", "NPY_BENCHMARKS", "Split", "make_split", "TaskSampler", "check_class_sizes",
           "min_eval_images",
           "load_image", "load_images", "to_model_mode", "dataset_background", "DATASET_BACKGROUNDS"]
