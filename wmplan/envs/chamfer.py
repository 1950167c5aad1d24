"""Chamfer distance between point sets, the success metric of Rope and Granular.

Convention (DINO-WM's): the mean Euclidean distance from each point of ``a`` to its
nearest neighbour in ``b`` plus the same mean from ``b`` to ``a``::

    CD(a, b) = mean_i min_j |a_i - b_j| + mean_j min_i |b_j - a_i|

Distances are not squared, so CD is in the units of the points and is 0 iff the two
sets cover each other exactly.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree


def _check_points(name: str, points: np.ndarray) -> np.ndarray:
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D point array, got shape {p.shape}")
    if not np.all(np.isfinite(p)):
        raise ValueError(f"{name} contains NaN or inf")
    return p


def chamfer_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Chamfer distance between point sets ``a [N, d]`` and ``b [M, d]`` (see module doc)."""
    a, b = _check_points("a", a), _check_points("b", b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"point dimensions differ: a is {a.shape}, b is {b.shape}")
    a_to_b, _ = cKDTree(b).query(a)
    b_to_a, _ = cKDTree(a).query(b)
    return float(a_to_b.mean() + b_to_a.mean())
