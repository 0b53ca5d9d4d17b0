"""Smudge (ruptured, basket) cells: the features of one cell's chromatin and the rule that tells a
burst cell's net from an intact nucleus (pipeline.detect, step 4)."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from scipy import ndimage as ndi

from pipeline.shapes import measure_solidity

if TYPE_CHECKING:
    from pipeline.detect import DetectConfig

__all__ = ["SmudgeFeatures", "is_smudge", "measure_smudge_features"]


class SmudgeFeatures(NamedTuple):
    """What tells a burst cell's chromatin from an intact nucleus (measure_smudge_features)."""

    solidity: float  # the chromatin's extent over its convex hull
    thread_um: float  # mean thickness of the chromatin, 2 x area / perimeter
    level: float  # 90th percentile of OD(R) - OD(B) over the chromatin


def measure_smudge_features(chromatin: np.ndarray, purple: np.ndarray, px_per_um: float) -> SmudgeFeatures:
    """(solidity, thread_um, level) of one cell's chromatin (bool mask, in its box).

    The chromatin's extent is its mask closed over 1 um gaps and hole-filled: one nucleus, or a
    smudge cell's whole net. solidity: extent over its convex hull (a ragged outline or a spread
    net is far from convex); thread_um: mean thickness of the chromatin, 2 x area / perimeter (an
    intact nucleus or lobe is >= ~2.5 um thick, the threads of a lacy net ~1 um); level: the 90th
    percentile of OD(R) - OD(B) over the chromatin (spread chromatin is pale).
    """
    close = max(1, round(0.5 * px_per_um))
    pad = close + 1  # the closing stays inside the padded box
    chromatin = np.pad(chromatin, pad)
    extent = ndi.binary_fill_holes(ndi.binary_closing(chromatin, iterations=close) | chromatin)
    edge = chromatin & ~ndi.binary_erosion(chromatin)
    thread = 2 * float(chromatin.sum()) / max(float(edge.sum()), 1.0) / px_per_um
    values = np.pad(purple, pad)[chromatin]
    level = float(np.percentile(values, 90)) if values.size else 0.0
    return SmudgeFeatures(measure_solidity(extent), thread, level)


# Chromatin at least this fraction as dark as the image's intact nuclei is dense, a nucleus's: a
# burst cell's chromatin is spread thin, so pale, however ragged a lobed neutrophil's outline is.
_DENSE_LEVEL = 0.8


def is_smudge(features: tuple[float, ...], image_level: float, config: DetectConfig) -> bool:
    """A ruptured cell: chromatin spread into a net of thin threads with a ragged outline, or
    chromatin far paler than the image's intact nuclei (`image_level`: the median level of its
    compact nuclei) and not a compact round nucleus. Chromatin as dense as the intact nuclei
    (`_DENSE_LEVEL`) is no net, whatever its outline: a lobed neutrophil's lobes."""
    solidity, thread, level = features
    if level >= _DENSE_LEVEL * image_level:
        return False
    if solidity < config.smudge_max_solidity and thread < config.smudge_max_thread_um:
        return True  # ragged, and made of threads (a neutrophil's lobes are thick)
    if solidity < 0.55 and thread < config.smudge_max_thread_um + 0.8:
        return True  # very ragged and thin
    return level < config.smudge_max_level * image_level and solidity < 0.9
