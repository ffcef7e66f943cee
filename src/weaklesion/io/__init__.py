"""Reading and writing files.

Every writer goes through :func:`~weaklesion.writing.atomic_write`: the data go to a
temporary file in the target folder, which is renamed over the target only once it is
complete, so a crash never leaves a truncated result and never destroys the previous
version.

One module per kind of file: :mod:`~weaklesion.io.images` (NIfTI, NPY, TIFF and PNG
images with their affine), :mod:`~weaklesion.io.tables` (CSV point and count labels),
:mod:`~weaklesion.io.nnunet` (nnU-Net's probability files) and
:mod:`~weaklesion.io.json_files` (JSON results); every public name is importable from
:mod:`weaklesion.io`.
"""

from weaklesion.io.images import (
    IMAGE_SUFFIXES,
    affine_spacing,
    image_suffix,
    read_affine,
    read_image,
    spacing_affine,
    write_image,
)
from weaklesion.io.json_files import json_ready, write_json
from weaklesion.io.nnunet import read_nnunet_probabilities
from weaklesion.io.tables import (
    POINT_AXES,
    SPACES,
    parse_counts_csv,
    parse_points_csv,
    read_counts_csv,
    read_points_csv,
    write_counts_csv,
    write_points_csv,
)
from weaklesion.writing import atomic_write

__all__ = [
    "IMAGE_SUFFIXES",
    "POINT_AXES",
    "SPACES",
    "affine_spacing",
    "atomic_write",
    "image_suffix",
    "json_ready",
    "parse_counts_csv",
    "parse_points_csv",
    "read_affine",
    "read_counts_csv",
    "read_image",
    "read_nnunet_probabilities",
    "read_points_csv",
    "spacing_affine",
    "write_counts_csv",
    "write_image",
    "write_json",
    "write_points_csv",
]
