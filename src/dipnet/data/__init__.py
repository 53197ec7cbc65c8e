"""Datasets by name: ``load_dataset("mnist1d")``. See :mod:`dipnet.data.base`."""
from .base import Dataset, DatasetInfo, list_datasets, load_dataset, register_dataset

__all__ = ["Dataset", "DatasetInfo", "list_datasets", "load_dataset", "register_dataset"]
