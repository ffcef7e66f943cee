"""Data for training from weak labels: synthetic phantoms, dataset folders, normalisation."""

from weaklesion.data.dataset import (
    Case,
    CaseArrays,
    Dataset,
    check_dataset,
    instance_centres,
    load_dataset,
)
from weaklesion.data.normalize import zscore
from weaklesion.data.phantom import PhantomCase, make_phantom_case, write_phantom_dataset

__all__ = [
    "Case",
    "CaseArrays",
    "Dataset",
    "PhantomCase",
    "check_dataset",
    "instance_centres",
    "load_dataset",
    "make_phantom_case",
    "write_phantom_dataset",
    "zscore",
]
