"""Array-type parametrisation in scanpy's style."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

ARRAY_TYPES = [
    pytest.param(np.asarray, id="ndarray"),
    pytest.param(sparse.csr_matrix, id="csr_matrix"),
    pytest.param(sparse.csc_matrix, id="csc_matrix"),
    pytest.param(sparse.csr_array, id="csr_array"),
]
DTYPES = [
    pytest.param(np.int32, id="int32"),
    pytest.param(np.int64, id="int64"),
    pytest.param(np.float32, id="float32"),
    pytest.param(np.float64, id="float64"),
]


def as_type(counts: sparse.csr_matrix, array_type, dtype):
    dense = counts.toarray().astype(dtype)
    return array_type(dense)


def dense(x) -> np.ndarray:
    return x.toarray() if sparse.issparse(x) else np.asarray(x)


def fit(denoiser, values, grid, counts=None, **data):
    """Fit a denoiser on values in memory (``ArrayData``); return the sweep and the data."""
    from sc_noise2self.denoisers import ArrayData

    data = ArrayData(values, counts, **data)
    return denoiser.fit(data, np.asarray(grid)), data


def predict(sweep, data, value, rows=slice(None)):
    """The fitted output at ``value`` for cells ``rows``."""
    return sweep.output(value).block(data.block(rows))


def predictions(sweep, data, rows=slice(None)) -> dict:
    """Every grid value's prediction for cells ``rows``, in whichever order the sweep offers."""
    block = data.block(rows)
    if sweep.order == "blocks":
        return {value: pred.copy() for value, pred in sweep.predictions(block)}
    return {step.value: step.predict(block) for step in sweep.values()}


def block_data(values, counts, rows_per_block, **data):
    """The same data read block by block, as from a dask array (``rows_per_block`` cells a block)."""
    import dask.array as da
    from scipy import sparse

    from sc_noise2self._engine.blocks import BlockData, Source
    from sc_noise2self.denoisers import ArrayData, Block

    whole = ArrayData(values, counts, **data)
    source = Source(
        da.from_array(sparse.csr_matrix(counts), chunks=(rows_per_block, -1)), "X", empty="error", counts=True
    )
    return BlockData(
        source,
        lambda block, rows: Block(rows, whole.matrix()[rows], block),
        scales=whole.scales,
        transform=whole.transform,
        max_rate=whole.max_rate,
    )


def out_of_core(adata, tmp_path, kinds=("dask-97", "dask-250", "backed", "lazy")):
    """The same AnnData (counts in ``X``, its ``obs``, ``var`` and ``obsm``) as each kind of input read in blocks.

    ``dask-N``: a dask array of CSR chunks of N cells; ``backed``: ``read_h5ad(..., backed="r")``;
    ``lazy``: ``anndata.experimental.read_lazy`` (left out without xarray). Yields ``(kind, adata)``.
    """
    import importlib.util
    import tempfile
    from pathlib import Path

    import anndata as ad
    import dask.array as da

    path = Path(tempfile.mkdtemp(dir=tmp_path)) / "counts.h5ad"  # a lazily read file stays open
    ad.AnnData(sparse.csr_matrix(adata.X), obs=adata.obs, var=adata.var, obsm=dict(adata.obsm)).write_h5ad(path)
    for kind in kinds:
        if kind.startswith("dask"):
            chunks = (int(kind.split("-")[1]), -1)
            X = da.from_array(sparse.csr_matrix(adata.X), chunks=chunks, asarray=False)
            yield kind, ad.AnnData(X, obs=adata.obs.copy(), var=adata.var.copy(), obsm=dict(adata.obsm))
        elif kind == "backed":
            backed = ad.read_h5ad(path, backed="r")
            yield kind, backed
            backed.file.close()
        elif importlib.util.find_spec("xarray") is not None:
            yield kind, ad.experimental.read_lazy(path)


def assert_same_layer(got, expected, kind: str, key: str = "denoised") -> None:
    """Two AnnDatas' layers ``key`` (dense or lazy) agree to float32 rounding of their factors."""

    def values(adata) -> np.ndarray:
        layer = adata.layers[key]
        return np.asarray(layer.compute() if hasattr(layer, "compute") else layer)

    np.testing.assert_allclose(values(got), values(expected), rtol=1e-4, atol=1e-4, err_msg=kind)
