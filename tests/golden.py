"""Recorded results: every choice, loss curve and output digest of a fixed set of calls.

``tests/test_golden.py`` reruns each case and compares it with ``tests/data/golden.json``:
the same choices, loss curves equal to 1e-12 relative, and outputs the same bytes (on a
machine whose CPU is the one the record was made on; elsewhere, within float32 rounding of
fixed entries, since compiled kernels may vectorise differently on another CPU).

Re-record only when a change of arithmetic is meant, and say so in the commit:
``python -m tests.golden`` (``--slow`` adds the cases on the full shared datasets).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import sparse

if TYPE_CHECKING:
    from collections.abc import Callable

    from anndata import AnnData

RECORD = Path(__file__).parent / "data" / "golden.json"
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
_SAMPLE = 64  # entries of each array kept for the comparison on another CPU


def cpu_name() -> str:
    """The CPU the compiled kernels were built for (llvm's host name and its features)."""
    import llvmlite.binding as llvm

    return (
        f"{llvm.get_host_cpu_name()} {hashlib.sha256(llvm.get_host_cpu_features().flatten().encode()).hexdigest()[:12]}"
    )


def digest(array: Any) -> dict[str, Any]:
    """Bytes digest, shape, float64 sums and fixed sampled entries of an output array."""
    if hasattr(array, "compute"):
        array = array.compute()
    array = array.toarray() if sparse.issparse(array) else np.asarray(array)
    flat = np.ascontiguousarray(array).ravel()
    positions = np.linspace(0, max(flat.size - 1, 0), num=min(_SAMPLE, flat.size)).astype(np.int64)
    values = flat.astype(np.float64)
    return {
        "sha256": hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest(),
        "dtype": str(array.dtype),
        "shape": list(array.shape),
        "sum": float(values.sum()),
        "sumsq": float(np.square(values).sum()),
        "sample": [float(v) for v in values[positions]],
    }


def _curve(record: dict[str, Any]) -> dict[str, Any]:
    """What a calibration record must keep: grid, losses, choices and settings."""
    keep = ("method", "calibration", "grid_names", "select", "grid_edge", "loss_no_denoising", "sampling_dispersion")
    params = {k: v for k, v in record["params"].items() if k not in ("method_repr",)}
    return {
        **{k: _plain(record[k]) for k in keep if k in record},
        "grid": _plain(record["grid"]),
        "loss": _plain(record["loss"]),
        "best": _plain(record["best"]),
        "best_min": _plain(record["best_min"]),
        "params": _plain(params),
    }


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


# -- Data ------------------------------------------------------------------------------------


def _bundled(n_cells: int | None = None, n_genes: int | None = None) -> AnnData:
    import sc_noise2self as n2s

    adata = n2s.datasets.pbmc2k()
    adata = adata[:n_cells, :n_genes].copy()
    adata.X = sparse.csr_matrix(adata.X)
    return adata


def _shared(name: str, n_cells: int | None = None, n_genes: int | None = None) -> AnnData:
    import anndata as ad

    path = SHARED_DATA / name
    if not path.exists():
        raise FileNotFoundError(path)
    adata = ad.read_h5ad(path)
    if n_genes is not None:  # the genes detected in most cells
        detected = np.asarray((adata.X > 0).sum(axis=0)).ravel()
        adata = adata[:, np.sort(np.argsort(-detected, kind="stable")[:n_genes])]
    return adata[:n_cells].copy()


def _reads() -> AnnData:
    import anndata as ad

    from .conftest import simulate_reads

    return ad.AnnData(simulate_reads(400, 150, seed=3).counts.astype(np.float32))


# -- Cases: each returns (calibration records, arrays) -----------------------------------------


def _denoise(adata: AnnData, key: str = "denoised", **kwargs: Any) -> tuple[dict, dict]:
    import sc_noise2self as n2s

    n2s.pp.denoise(adata, key_added=key, progress=False, **kwargs)
    record = adata.uns[key]
    arrays = {f"layers/{key}": adata.layers[key]}
    for slot, names in record["outputs"].items():
        for name in names:
            if slot in ("obsm", "varm"):
                arrays[f"{slot}/{name}"] = getattr(adata, slot)[name]
            elif slot in ("var", "obs"):
                arrays[f"{slot}/{name}"] = getattr(adata, slot)[name].to_numpy()
    extra = {"output": record["output"], "scale": record["scale"]}
    return {"denoise": _curve(record) | extra}, arrays


def _dask(adata: AnnData, rows: int) -> AnnData:
    import anndata as ad
    import dask.array as da

    return ad.AnnData(da.from_array(sparse.csr_matrix(adata.X), chunks=(rows, -1)), var=adata.var.copy())


def _hvg(adata: AnnData, n: int) -> AnnData:
    detected = np.asarray((adata.X > 0).sum(axis=0)).ravel()
    mask = np.zeros(adata.n_vars, dtype=bool)
    mask[np.argsort(-detected, kind="stable")[:n]] = True
    adata.var["highly_variable"] = mask
    return adata


def _pipeline(adata: AnnData, **kwargs: Any) -> tuple[dict, dict]:
    import sc_noise2self as n2s

    n2s.pp.pca(adata, progress=False, **kwargs)
    n2s.pp.neighbors(adata, progress=False, **kwargs)
    records = {
        "pca": _curve(adata.uns["pca"]["calibration"]),
        "neighbors": _curve(adata.uns["neighbors"]["calibration"]),
    }
    arrays = {
        "obsm/X_pca": adata.obsm["X_pca"],
        "varm/PCs": adata.varm["PCs"],
        "uns/pca/variance": adata.uns["pca"]["variance"],
        "obsp/connectivities": adata.obsp["connectivities"],
        "obsp/distances": adata.obsp["distances"],
    }
    return records, arrays


def _autoencoder(**kwargs: Any) -> Any:
    from sc_noise2self.denoisers import Autoencoder

    return Autoencoder(hidden=(32,), batch_size=64, n_fits=1, device="cpu", random_state=0, **kwargs)


def _calibrate(data: Any, **kwargs: Any) -> tuple[dict, dict]:
    import sc_noise2self as n2s

    result = n2s.tl.calibrate(data, progress=False, **kwargs)
    return {"calibrate": _curve(result.to_uns())}, {}


CASES: dict[str, Callable[[], tuple[dict, dict]]] = {
    "pca_bundled_defaults": lambda: _denoise(_bundled()),
    "pca_1se_three_splits": lambda: _denoise(_bundled(600), select="1se", n_splits=3),
    "pca_sqrt_poisson_loss": lambda: _denoise(
        _bundled(500, 300), transform="sqrt", target_sum=None, loss="poisson", grid=[1, 2, 4, 8, 16]
    ),
    "pca_counts_scale": lambda: _denoise(_bundled(500, 300), scale="counts", grid=[2, 4, 8, 12]),
    "pca_factored": lambda: _denoise(_bundled(500, 300), max_dense_bytes=1, grid=[2, 4, 8, 12]),
    "pca_factored_counts": lambda: _denoise(_bundled(400, 200), max_dense_bytes=1, scale="counts", grid=[3, 6]),
    "pca_mask_var": lambda: _denoise(_hvg(_bundled(500, 400), 150), grid=[2, 4, 8, 12]),
    "pca_genes": lambda: _denoise(_bundled(500, 300), calibration="genes", grid=[1, 3, 6, 10]),
    "pca_dask": lambda: _denoise(_dask(_bundled(500, 300), 128), grid=[2, 4, 8, 12], n_splits=2),
    "pca_nb_sampling": lambda: _denoise(_reads(), sampling="negative_binomial", grid=[1, 2, 4, 8]),
    "pca_held_out_depth": lambda: _denoise(_bundled(500, 300), depth="held_out", grid=[1, 2, 4, 8, 16]),
    "diffusion_mcv": lambda: _denoise(_bundled(500, 300), method="diffusion", grid=[0, 1, 2, 4, 8]),
    "diffusion_pairs_factored": lambda: _denoise(
        _bundled(400, 300), method="diffusion", max_dense_bytes=1, grid=np.array([[0, 5], [2, 5], [2, 15], [4, 15]])
    ),
    "diffusion_genes": lambda: _denoise(_bundled(400, 300), method="diffusion", calibration="genes", grid=[0, 1, 3]),
    "diffusion_dask": lambda: _denoise(_dask(_bundled(400, 300), 100), method="diffusion", grid=[0, 1, 2, 4]),
    "diffusion_mask_var": lambda: _denoise(_hvg(_bundled(400, 300), 120), method="diffusion", grid=[0, 2, 4]),
    "knn_mcv": lambda: _denoise(_bundled(500, 300), method="knn", grid=[2, 5, 10, 20]),
    "knn_genes": lambda: _denoise(_bundled(400, 300), method="knn", calibration="genes", grid=[2, 5, 10]),
    "autoencoder_mcv": lambda: _denoise(
        _bundled(300, 150), method=_autoencoder(), grid=np.array([[4, 1], [4, 2], [8, 2]])
    ),
    "autoencoder_normal": lambda: _denoise(_bundled(300, 150), method=_autoencoder(likelihood="normal"), grid=[1, 2]),
    "autoencoder_genes": lambda: _denoise(
        _bundled(300, 150), method=_autoencoder(), calibration="genes", grid=[1, 2], n_groups=4
    ),
    "autoencoder_dask": lambda: _denoise(
        _dask(_bundled(300, 150), 100), method=_autoencoder(block_cells=100), grid=[1, 2]
    ),
    "pipeline_pca_neighbors": lambda: _pipeline(_bundled(600, 300)),
    "calibrate_genes_values": lambda: _calibrate(
        np.log1p(_bundled(300, 200).X.toarray()), calibration="genes", transform="none", target_sum=None, grid=[1, 2, 4]
    ),
    "mouse_shallow_pca": lambda: _denoise(_shared("mouse10k_first1000genes.h5ad", 3000, 400)),
}

SLOW_CASES: dict[str, Callable[[], tuple[dict, dict]]] = {
    "mouse10k_pca": lambda: _denoise(_shared("mouse10k_first1000genes.h5ad")),
    "pbmc8k_2000genes_pca": lambda: _denoise(_shared("pbmc8k.h5ad", None, 2000)),
    "pbmc8k_2000genes_diffusion": lambda: _denoise(_shared("pbmc8k.h5ad", 3000, 2000), method="diffusion"),
}


def run(name: str) -> dict[str, Any]:
    """Run one case; return its records and the digests of its arrays."""
    case = CASES.get(name) or SLOW_CASES[name]
    records, arrays = case()
    return {"records": records, "arrays": {k: digest(v) for k, v in arrays.items()}}


def main(argv: list[str]) -> None:
    names = list(CASES) + (list(SLOW_CASES) if "--slow" in argv else [])
    previous = json.loads(RECORD.read_text()) if RECORD.exists() else {"cases": {}}
    cases = dict(previous["cases"])
    for name in names:
        print(f"recording {name}", flush=True)
        cases[name] = run(name)
    RECORD.parent.mkdir(exist_ok=True)
    RECORD.write_text(json.dumps({"cpu": cpu_name(), "cases": cases}, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
