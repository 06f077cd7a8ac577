"""The exact neighbour search: float64 brute force's answer, seeds that only save time, bad input refused."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cdist
from sklearn.neighbors import NearestNeighbors

from sc_noise2self.denoisers._search import MARGIN, exact_neighbours


def _brute_force(points: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Every pair's float64 distance, each row sorted by (distance, cell); the cell itself left out."""
    squared = cdist(points, points, "sqeuclidean")
    np.fill_diagonal(squared, np.inf)
    cells = np.broadcast_to(np.arange(len(points)), squared.shape)
    order = np.lexsort((cells, squared), axis=1)[:, :k]
    return np.sqrt(np.take_along_axis(squared, order, axis=1)), order


def _clustered(n: int, d: int, seed: int = 0, offset: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(6, d)) * 4
    return centres[rng.integers(6, size=n)] + rng.normal(size=(n, d)) * np.linspace(2, 0.2, d) + offset


@pytest.mark.parametrize(
    ("n", "d", "k"),
    [(2, 1, 1), (9, 3, 8), (50, 2, 5), (300, 10, 30), (1_000, 30, 15), (2_000, 50, 100), (700, 5, 690)],
    ids=lambda v: str(v),
)
def test_matches_float64_brute_force(n, d, k):
    points = _clustered(n, d)
    distances, indices = exact_neighbours(points, k)
    want_distances, want_indices = _brute_force(points, k)
    np.testing.assert_array_equal(indices, want_indices)
    np.testing.assert_allclose(distances, want_distances, rtol=1e-12, atol=1e-12)
    assert distances.dtype == np.float64 and indices.dtype == np.int64


def test_far_from_the_origin_and_between_scales():
    """Coordinates far from zero and on very different scales: centring keeps the float32 stage accurate."""
    points = _clustered(800, 20, offset=1e4)
    points[:, :3] *= 1e3
    _, indices = exact_neighbours(points, 15)
    np.testing.assert_array_equal(indices, _brute_force(points, 15)[1])


def test_agrees_with_scikit_learn():
    points = _clustered(3_000, 30, seed=3)
    distances, indices = exact_neighbours(points, 20)
    want_distances, want_indices = NearestNeighbors(n_neighbors=20).fit(points).kneighbors()
    np.testing.assert_array_equal(indices, want_indices)
    np.testing.assert_allclose(distances, want_distances, rtol=1e-9)


@pytest.mark.parametrize("data", ["clustered", "equally near cells"])
def test_seeds_change_the_time_not_a_bit_of_the_answer(data):
    """The candidates are the smallest in a total order (value, cell): no seed can pick among ties."""
    rng = np.random.default_rng(0)
    if data == "clustered":
        points = _clustered(1_500, 12, seed=1)
    else:  # many cells at exactly equal distances, more than the margin
        points = rng.integers(0, 3, size=(1_500, 4)).astype(float)
    plain = exact_neighbours(points, 25)
    n = len(points)
    cases = {
        "true neighbours": plain[1],
        "reversed": plain[1][:, ::-1],
        "fewer components": exact_neighbours(points[:, :2], 25)[1],
        "random cells, self and -1": np.where(rng.random((n, 40)) < 0.2, -1, rng.integers(n, size=(n, 40))),
        "the last cells": np.broadcast_to(np.arange(n - 40, n), (n, 40)),
        "itself only": np.arange(n)[:, None],
        "one cell repeated": np.zeros((n, 60), dtype=np.int64),
        "empty": np.empty((n, 0), dtype=np.int64),
    }
    for name, seeds in cases.items():
        distances, indices = exact_neighbours(points, 25, seeds=seeds)
        assert indices.tobytes() == plain[1].tobytes(), name
        assert distances.tobytes() == plain[0].tobytes(), name


def test_duplicate_cells_at_exact_distances():
    """Cells with equal coordinates: the distances are exact, and the same data give the same bytes."""
    points = np.repeat(np.random.default_rng(2).normal(size=(40, 3)), 5, axis=0)
    distances, indices = exact_neighbours(points, 7)
    want_distances, want_indices = _brute_force(points, 7)
    np.testing.assert_allclose(distances, want_distances, rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(indices, want_indices)  # within MARGIN ties, order is by cell index
    again = exact_neighbours(points.copy(), 7)
    assert again[1].tobytes() == indices.tobytes()
    assert not (indices == np.arange(len(points))[:, None]).any()
    # More equally near cells than the margin: any of them is a right answer, at the right distance.
    grid = np.random.default_rng(4).integers(0, 3, size=(500, 4)).astype(float)
    distances, indices = exact_neighbours(grid, 10)
    np.testing.assert_allclose(distances, _brute_force(grid, 10)[0], rtol=1e-12)
    recomputed = np.linalg.norm(grid[indices] - grid[:, None, :], axis=2)
    np.testing.assert_allclose(distances, recomputed, rtol=1e-12)
    assert all(len(set(row)) == 10 for row in indices) and not (indices == np.arange(500)[:, None]).any()
    tied = (cdist(grid, grid) <= distances[:, -1:]).sum(axis=1) - 1  # cells as near as the 10th, itself left out
    assert tied.max() > 10 + MARGIN  # the case this checks occurs


@pytest.mark.parametrize(
    ("points", "k", "match"),
    [
        (np.zeros((5, 2)), 5, "between 1 and"),
        (np.zeros((5, 2)), 0, "between 1 and"),
        (np.zeros((1, 2)), 1, "between 1 and"),
        (np.array([[0.0, 1.0], [np.nan, 0.0], [1.0, 1.0]]), 1, "NaN or infinite"),
        (np.array([[0.0, 1.0], [np.inf, 0.0], [1.0, 1.0]]), 1, "NaN or infinite"),
    ],
    ids=["k = cells", "k = 0", "one cell", "NaN", "inf"],
)
def test_bad_input_is_refused(points, k, match):
    with pytest.raises(ValueError, match=match):
        exact_neighbours(points, k)


def test_bad_seeds_are_refused():
    points = _clustered(20, 3)
    with pytest.raises(ValueError, match="seeds"):
        exact_neighbours(points, 3, seeds=np.zeros((19, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="seeds"):
        exact_neighbours(points, 3, seeds=np.full((20, 2), 20))
