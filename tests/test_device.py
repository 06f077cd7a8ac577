"""PCA and diffusion on a torch device: the CUDA code paths, run on CPU tensors, against the compiled CPU kernels."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

import sc_noise2self as n2s
from sc_noise2self._numerics import device as on_device
from sc_noise2self._numerics import linalg

from .conftest import simulate_low_rank_poisson

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def counts() -> sparse.csr_matrix:
    return simulate_low_rank_poisson(400, 90, 4, mean_depth=300.0, seed=2).counts


@pytest.fixture
def torch_on_cpu(monkeypatch):
    """Every device but ``"cpu"`` resolves to torch's CPU: the device code paths run on CPU tensors."""
    resolve = on_device.resolve
    monkeypatch.setattr(on_device, "resolve", lambda d: None if d == "cpu" else (resolve("cpu") or torch.device("cpu")))


@pytest.fixture
def values(counts) -> sparse.csr_matrix:
    from sc_noise2self._numerics.transform import transformed

    return transformed(counts, "log1p", 1e4)


@pytest.mark.parametrize("dense", [False, True], ids=["csr", "dense"])
def test_device_linear_algebra_equals_the_cpu(values, dense, monkeypatch):
    monkeypatch.setattr(on_device, "_DENSE_ELEMENTS", 90 * 150)  # several row blocks per call: the merge too
    cpu = torch.device("cpu")
    X = values.toarray() if dense else values
    expected, got = linalg.gram_stats(X), on_device.gram_stats(X, cpu)
    assert got.n == expected.n
    np.testing.assert_allclose(got.mean, expected.mean, rtol=1e-12)
    np.testing.assert_allclose(got.m2, expected.m2, rtol=1e-10, atol=1e-10)
    (s, vt), (s_cpu, vt_cpu) = on_device.covariance_svd(expected, 10, cpu), linalg.covariance_svd(expected, 10)
    np.testing.assert_allclose(s, s_cpu, rtol=1e-10)
    np.testing.assert_allclose(vt, vt_cpu, atol=1e-8)  # the same signs
    empty = on_device.gram_stats(X[:0], cpu)  # a block whose cells were all left out
    assert empty.n == 0 and not empty.m2.any()
    assert not on_device.gram_times(X[:0], np.ones((90, 2)), cpu)[1].any()
    q = np.random.default_rng(0).standard_normal((90, 12))
    for a, b in zip(on_device.gram_times(X, q, cpu), linalg.gram_times(X, q), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(
        on_device.centred_scores(X, expected.mean, vt_cpu, cpu),
        linalg.centred_scores(X, expected.mean, vt_cpu),
        rtol=1e-10,
        atol=1e-10,
    )


def test_device_graph_and_walk_equal_the_cpu(values):
    """The exact search screened on the device finds the CPU's neighbours; the walk's steps match scipy's."""
    from sc_noise2self.denoisers._search import exact_neighbours
    from sc_noise2self.denoisers.diffusion import transition_matrix

    cpu = torch.device("cpu")
    embedding = linalg.centred_scores(values, np.asarray(values.mean(axis=0)).ravel(), np.eye(90)[:10])
    expected = exact_neighbours(embedding, 15)
    got = exact_neighbours(embedding, 15, device=cpu)
    np.testing.assert_array_equal(got[1], expected[1])
    np.testing.assert_array_equal(got[0], expected[0])
    walk = transition_matrix(*expected, kernel="adaptive")
    z = np.random.default_rng(1).standard_normal((values.shape[0], 6))
    steps = list(on_device.diffuse(walk, z, [0, 1, 3], cpu))
    for got_z, t in zip(steps, (0, 1, 3), strict=True):
        want = z
        for _ in range(t):
            want = walk @ want
        np.testing.assert_allclose(got_z, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "method",
    [
        pytest.param(lambda: n2s.denoisers.PCA(), id="pca"),
        pytest.param(lambda: n2s.denoisers.PCA(solver="randomized"), id="pca-randomized"),
        pytest.param(lambda: n2s.denoisers.Diffusion(), id="diffusion"),
    ],
)
@pytest.mark.parametrize("blockwise", [False, True], ids=["memory", "dask"])
def test_the_device_path_chooses_as_the_cpu(counts, torch_on_cpu, method, blockwise):
    da = pytest.importorskip("dask.array") if blockwise else None
    data = da.from_array(counts, chunks=(150, -1)) if blockwise else counts
    grid = [0, 1, 2, 4] if isinstance(method(), n2s.denoisers.Diffusion) else [1, 2, 3, 5, 8]
    on_torch = n2s.tl.calibrate(data, method=method(), grid=grid, progress=False)
    on_cpu = n2s.tl.calibrate(data, method=method().set_params(device="cpu"), grid=grid, progress=False)
    assert on_torch.best == on_cpu.best
    np.testing.assert_allclose(on_torch.loss, on_cpu.loss, rtol=1e-6)
    assert on_torch.loss.tobytes() != on_cpu.loss.tobytes()  # the device path ran (its rounding differs)


def test_the_device_scorer_converts_and_keeps_non_finite_predictions_non_finite(counts, torch_on_cpu):
    """Predictions below 0 are converted as 0 (the written projection); an infinite one scores NaN."""
    from sc_noise2self._numerics.loss import RowScorer

    n = 8
    table = np.arange(3 * n, dtype=np.float64).reshape(3, n) ** 0.5
    target = np.ones((3, 4))
    scorer = RowScorer(target, table.ravel(), n, np.array([0, 1, 2]), np.array([0.0, 0.25, 0.0]), 2.0)
    pred = np.array([[-1.0, 0.0, 0.5, 100.0], [0.1, 0.2, 0.3, 0.4], [np.inf, 0.0, 0.0, 0.0]], dtype=np.float32)

    def converted(row: int, value: float) -> float:
        pos = max(value * 2.0, 0.0)
        j = int(min(pos, n - 2))
        return table[row, j] + (pos - j) * (table[row, j + 1] - table[row, j])

    errors = on_device._Scorer(scorer, torch.device("cpu")).errors(torch.as_tensor(pred)).numpy()
    expected = [sum((converted(0, v) - 1) ** 2 for v in pred[0])]
    expected.append(sum((0.75 * converted(1, v) + 0.25 * converted(2, v) - 1) ** 2 for v in pred[1]))
    np.testing.assert_allclose(errors[:2], expected, rtol=1e-12)
    assert np.isnan(errors[2])


def test_device_settings_are_checked(monkeypatch):
    monkeypatch.setattr(on_device, "_cuda_driver", lambda: False)
    assert on_device.resolve("auto") is None and on_device.resolve("cpu") is None
    for bad in ("gpu", "", 0, None):
        with pytest.raises(ValueError, match="device must be 'auto', 'cpu', 'cuda' or 'cuda:N'"):
            n2s.tl.calibrate(sparse.eye(5, format="csr"), method=n2s.denoisers.PCA(device=bad), progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="torch sees no CUDA device"):
            on_device.resolve("cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA device")
@pytest.mark.parametrize("cls", [n2s.denoisers.PCA, n2s.denoisers.Diffusion])
def test_a_missing_cuda_device_is_refused_before_any_work(counts, monkeypatch, cls):
    import anndata as ad

    adata = ad.AnnData(counts.copy())
    monkeypatch.setattr("sc_noise2self.pp._denoise.calibrate", lambda *a, **k: pytest.fail("calibration started"))
    with pytest.raises(ValueError, match="torch sees no CUDA device"):
        n2s.pp.denoise(adata, method=cls(device="cuda:0"), progress=False)
    assert list(adata.layers) == [] and list(adata.uns) == []


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["pca", "diffusion"])
def test_cuda_chooses_as_the_cpu(counts, name):
    cls = n2s.denoisers.registered()[name]
    grid = [0, 1, 2, 4] if name == "diffusion" else [1, 2, 3, 5, 8]
    on_cuda = n2s.tl.calibrate(counts, method=cls(device="cuda"), grid=grid, progress=False)
    on_cpu = n2s.tl.calibrate(counts, method=cls(device="cpu"), grid=grid, progress=False)
    assert on_cuda.best == on_cpu.best
    np.testing.assert_allclose(on_cuda.loss, on_cpu.loss, rtol=1e-6)
