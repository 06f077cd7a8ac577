"""Same seed, same bytes: whatever the chunking, the thread counts, or the output's storage."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
from scipy import sparse

import sc_noise2self as n2s
from sc_noise2self._numerics.rows import GROUP, CellSum, low_rank_rows, partial_sum, sparse_dense_product

from .conftest import simulate_low_rank_poisson

METHODS = [
    pytest.param({"method": "pca", "grid": [1, 3, 6, 10]}, id="pca"),
    pytest.param({"method": "diffusion", "grid": n2s.tl.grid(t=[0, 1, 3], n_neighbors=[5, 15])}, id="diffusion"),
    pytest.param({"method": "pca", "grid": [1, 3, 6], "calibration": "genes", "n_groups": 3}, id="pca-genes"),
    pytest.param(
        {"method": "diffusion", "grid": [0, 1, 3], "calibration": "genes", "n_groups": 3}, id="diffusion-genes"
    ),
]


@pytest.fixture(scope="module")
def counts():
    return simulate_low_rank_poisson(700, 60, 4, mean_depth=300.0, seed=5).counts


@pytest.mark.parametrize("settings", METHODS)
def test_chunk_size_changes_no_bit(counts, settings):
    outputs = []
    for chunk_size in (None, 1, 37, 256, 700):
        a = ad.AnnData(counts.copy())
        n2s.pp.denoise(a, chunk_size=chunk_size, progress=False, **settings)
        record = a.uns["denoised"]
        errors = record["difference_se_cells"].tobytes()
        outputs.append((record["loss"].tobytes(), errors, a.layers["denoised"].tobytes()))
    assert all(out == outputs[0] for out in outputs)


def test_autoencoder_chunk_size_changes_no_bit(counts):
    pytest.importorskip("torch")
    from sc_noise2self.denoisers import Autoencoder

    outputs = []
    for chunk_size in (None, 100, 1500):
        a = ad.AnnData(counts.copy())
        model = Autoencoder(hidden=(16,), batch_size=64, device="cpu")
        n2s.pp.denoise(a, method=model, grid=[1, 2], chunk_size=chunk_size, progress=False)
        outputs.append((a.uns["denoised"]["loss"].tobytes(), a.layers["denoised"].tobytes()))
    assert all(out == outputs[0] for out in outputs)


@pytest.mark.parametrize("method", ["pca", "diffusion"])
def test_factored_output_is_the_dense_output(counts, method):
    dense, factored = ad.AnnData(counts.copy()), ad.AnnData(counts.copy())
    n2s.pp.denoise(dense, method=method, grid=[2, 4], progress=False)
    n2s.pp.denoise(factored, method=method, grid=[2, 4], progress=False, max_dense_bytes=1)
    np.testing.assert_array_equal(factored.layers["denoised"].compute(), dense.layers["denoised"])
    np.testing.assert_array_equal(n2s.tl.denoised_genes(factored, genes=[5, 1]), dense.layers["denoised"][:, [5, 1]])


@pytest.mark.parametrize("accumulate", [np.float64, np.float32], ids=["float64", "float32"])
def test_low_rank_rows_do_not_depend_on_the_other_rows(accumulate):
    rng = np.random.default_rng(0)
    scores, loadings, offset = rng.standard_normal((300, 40)), rng.standard_normal((40, 513)), rng.standard_normal(513)
    whole = low_rank_rows(offset, scores, loadings, accumulate=accumulate)
    for rows in (slice(0, 1), slice(7, 44), slice(299, 300)):
        assert low_rank_rows(offset, scores[rows], loadings, accumulate=accumulate).tobytes() == whole[rows].tobytes()
    f32 = [np.asarray(x, np.float32).astype(np.float64) for x in (offset, scores, loadings)]
    tolerance = 1e-6 if accumulate is np.float64 else 1e-5
    np.testing.assert_allclose(whole, f32[0] + f32[1] @ f32[2], rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("shape", [(1, 1, 1), (300, 300, 7), (200, 50, 1), (40, 40, 65)], ids=str)
def test_sparse_dense_product_is_scipys_bit_for_bit(shape):
    n_rows, n_inner, n_cols = shape
    A = sparse.random(n_rows, n_inner, 0.2, format="csr", random_state=1)
    A = sparse.csr_matrix(sparse.diags(np.r_[0.0, np.ones(n_rows - 1)]) @ A)  # the first row empty
    A.eliminate_zeros()
    dense = np.random.default_rng(2).standard_normal((n_inner, n_cols))
    assert sparse_dense_product(A, dense).tobytes() == (A @ dense).tobytes()


def test_sparse_dense_product_keeps_scipys_order_for_unsorted_and_repeated_entries():
    # Entries added in stored order, as scipy does, even when not canonical (float32 data too).
    data = np.array([0.1, 1e8, -1e8, 0.3, 0.7], dtype=np.float32)
    A = sparse.csr_matrix((data, np.array([3, 0, 0, 1, 3]), np.array([0, 3, 5])), shape=(2, 4))
    dense = np.random.default_rng(3).standard_normal((4, 5))
    expected = sparse.csr_matrix((data.astype(np.float64), A.indices, A.indptr), shape=A.shape) @ dense
    assert sparse_dense_product(A, dense).tobytes() == expected.tobytes()


def test_cell_sums_do_not_depend_on_the_blocks():
    rng = np.random.default_rng(1)
    values = rng.standard_normal((3 * GROUP + 17, 2)) * 10.0 ** rng.integers(-6, 6, (3 * GROUP + 17, 1))
    totals = set()
    for bounds in ([0, len(values)], [0, 1, GROUP, GROUP + 3, 2 * GROUP + 5, len(values)], range(0, len(values), 13)):
        total = CellSum(2)
        edges = [*bounds, len(values)] if bounds[-1] != len(values) else list(bounds)
        for a, b in itertools.pairwise(edges):
            total.add_partial(partial_sum(a, values[a:b]))
        totals.add(total.total().tobytes())
    assert len(totals) == 1
    np.testing.assert_allclose(np.frombuffer(totals.pop()), values.sum(axis=0), rtol=1e-12)
    with pytest.raises(RuntimeError, match="cell order"):
        CellSum(1).add(5, np.ones(3))


_SCRIPT = """
import hashlib, json, sys
import anndata as ad
import sc_noise2self as n2s
from sc_noise2self.denoisers import Autoencoder
sys.path.insert(0, {root!r})
from tests.conftest import simulate_low_rank_poisson
counts = simulate_low_rank_poisson(500, 60, 4, mean_depth=300.0, seed=5).counts
out = {{}}
for name, kwargs in [
    ("pca", {{"grid": [1, 3, 6]}}),
    ("diffusion", {{"method": "diffusion", "grid": [0, 1, 3]}}),
    ("genes", {{"calibration": "genes", "grid": [1, 3], "n_groups": 3}}),
    ("diffusion-genes", {{"method": "diffusion", "calibration": "genes", "grid": [0, 1, 3], "n_groups": 3}}),
    ("autoencoder", {{"method": Autoencoder(hidden=(16,), batch_size=64, device="cpu"), "grid": [1, 2]}}),
]:
    a = ad.AnnData(counts.copy())
    n2s.pp.denoise(a, progress=False, **kwargs)
    digest = hashlib.sha256(a.uns["denoised"]["loss"].tobytes() + a.layers["denoised"].tobytes()).hexdigest()
    out[name] = digest
print(json.dumps(out))
"""


def test_thread_counts_change_no_bit(tmp_path):
    """BLAS, OpenMP, numba and torch threads: 1 and 2 give the same bytes (fresh processes)."""
    pytest.importorskip("torch")
    root = str(Path(__file__).resolve().parents[1])
    script = tmp_path / "run.py"
    script.write_text(_SCRIPT.format(root=root))
    digests = []
    for threads in ("1", "2"):
        env = {**os.environ, "OMP_NUM_THREADS": threads, "NUMBA_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads}
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        digests.append(json.loads(done.stdout.strip().splitlines()[-1]))
    assert digests[0] == digests[1]
