"""What the metric records share: ``to_dict`` for JSON, the default size strata."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import fields
from types import MappingProxyType
from typing import Any

from weaklesion.io import json_ready

SIZE_STRATA: Mapping[str, tuple[float, float]] = MappingProxyType(
    {"small": (3, 10), "medium": (11, 50), "large": (51, math.inf)}
)
"""Default lesion-size strata for :func:`~weaklesion.metrics.recall_by_size`: inclusive
voxel-count ranges."""


# Bootstrap replicates of an FROC curve are evaluated in blocks of at most this many
# (replicate, detection) entries, so that memory stays bounded for large studies.
_BLOCK_ENTRIES = 2**22


class _Record:
    """Adds ``to_dict`` (JSON-ready: lists, Python numbers, ``None`` for NaN) to records."""

    def to_dict(self) -> dict[str, Any]:
        """Return the record as a JSON-ready dictionary."""
        return {item.name: json_ready(getattr(self, item.name)) for item in fields(self)}
