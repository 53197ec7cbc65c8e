"""Datasets by name: in-memory tensors plus the metadata later code relies on."""
from .base import DATASETS, Dataset, DatasetInfo, load_dataset, load_for_run, register_dataset, run_data_seed
from . import cifar, digits, idx, mnist1d, synthetic  # noqa: F401  (register the loaders)
from .cifar import load_cifar, safe_unpickle
from .idx import load_idx_folder, read_idx
from .mnist1d import SHIFTS as MNIST1D_SHIFTS, mnist1d_shifted
from .base import DEFAULT_VAL_FRACTION, stratified_split, with_validation

__all__ = [
    "DATASETS",
    "DEFAULT_VAL_FRACTION",
    "Dataset",
    "DatasetInfo",
    "MNIST1D_SHIFTS",
    "load_cifar",
    "load_dataset",
    "load_for_run",
    "load_idx_folder",
    "mnist1d_shifted",
    "read_idx",
    "register_dataset",
    "run_data_seed",
    "safe_unpickle",
    "stratified_split",
    "with_validation",
]
