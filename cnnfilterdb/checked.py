"""A model file as a check reads it (SPEC 15): its 3x3 convolutions with their filters, conv depth,
shape and quality metrics, exactly as an ingest would store them. Built by the ingest's reader
(``cnnfilterdb.ingest.model_files.read_checked``), compared with the population by ``check.py``;
kept apart from both so that the ingest needs none of the statistics' imports.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class CheckedLayer:
    """One 3x3 convolution of a checked model, as an ingest would store it."""
    name: str
    conv_depth: int
    conv_depth_norm: float
    in_channels: int
    out_channels: int
    groups: int
    metrics: dict            # LAYER_METRICS -> float or None, as the ingest's quality row
    columns: np.ndarray      # (9, n_filters) float32: the filters, one per column (as the shards hold them)

    @property
    def n_filters(self) -> int:
        return int(self.columns.shape[1])


@dataclass
class CheckedModel:
    """A model file read as an ingest reads it (``cnnfilterdb.ingest.model_files.read_checked``)."""
    name: str                # the file's name (an upload's, not a temporary file's)
    kind: str
    sha256: str
    bytes: int
    producer: str | None
    op_set: int | None
    layers: list[CheckedLayer] = field(default_factory=list)


__all__ = ["CheckedLayer", "CheckedModel"]
