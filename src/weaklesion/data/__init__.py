"""Data for training from weak labels: synthetic phantoms, dataset folders, normalisation."""

from weaklesion.data.phantom import (
    PhantomCase,
    instance_centres,
    make_phantom_case,
    write_phantom_dataset,
)

__all__ = ["PhantomCase", "instance_centres", "make_phantom_case", "write_phantom_dataset"]
