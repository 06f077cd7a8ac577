"""Calibrated drop-ins for scanpy's pipeline: ``pp.pca`` (how many PCs) and ``pp.neighbors`` (how many neighbours).

Each writes exactly what the scanpy function writes, so every scanpy tool downstream
runs unchanged, and keeps its calibration curve inside the same ``uns`` entry, so a later
run of the scanpy function replaces the record with the result it describes.

Both score the smoothing a neighbour graph stands for — each cell's expression replaced by
the mean over it and its nearest cells in the principal components
(:class:`~sc_noise2self.denoisers.KNNAverage`) — against held-out molecules:

- :func:`pca`: the number of components whose graph predicts best (over a range of
  ``n_neighbors`` too), or, with ``objective="reconstruction"``, the rank whose PCA
  reconstruction predicts best (the denoising rank, lower);
- :func:`neighbors`: the ``n_neighbors`` that predicts best on the given components; the
  graph is then built by ``sc.pp.neighbors`` itself with that ``n_neighbors``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from scipy import sparse

from .. import _logging as logg
from .._anndata import check_key, check_targets, commit, counts_of, resolve_mask_var, writable
from .._docs import shared_docs
from .._engine import (
    SWEEPS_ON,
    Settings,
    add_steps,
    bar_label,
    calibrate,
    calibration_record,
    fit_at,
    grid_product,
    is_blockwise,
    log_choice,
    method_seed,
    package_version,
    progress_bar,
    resolve_method,
    warn_about_choice,
)
from .._numerics.checks import check_flag, check_int_grid, check_positive_int
from .._numerics.machine import adapts_threads

if TYPE_CHECKING:
    import pandas as pd
    from anndata import AnnData

    from .._engine import Calibrated
    from .._types import ArrayLike, Calibration, Depth, RandomState, Sampling, Select, TransformName
    from ..denoisers import Block, Data, Denoiser

__all__ = ["neighbors", "pca"]


@adapts_threads
@shared_docs
def pca(
    adata: AnnData,
    *,
    layer: str | None = None,
    key_added: str | None = None,
    objective: Literal["neighbors", "reconstruction"] = "neighbors",
    grid: ArrayLike | None = None,
    mask_var: str | ArrayLike | None = "highly_variable",
    calibration: Calibration = "mcv",
    split_fraction: float = 0.9,
    n_splits: int | None = None,
    max_scored_cells: int | None = 10_000,
    sampling: Sampling = "poisson",
    dispersion: float | None = None,
    depth: Depth | None = None,
    n_groups: int = 10,
    transform: TransformName = "log1p",
    target_sum: float | None = 1e4,
    select: Select = "min",
    random_state: RandomState = 0,
    progress: bool | None = None,
    overwrite: bool = False,
    copy: bool = False,
) -> AnnData | None:
    """Principal component analysis with the number of components chosen by the data.

    A drop-in for :func:`scanpy.pp.pca` that answers "how many PCs?" by self-supervision,
    for what the components are used for:

    - ``objective="neighbors"`` (default): the number of components whose neighbour
      graph is best, i.e. whose kNN average (each cell's expression replaced by the mean
      over it and its nearest cells in those components, see
      :class:`~sc_noise2self.denoisers.KNNAverage`) best predicts held-out molecules, over
      ``n_neighbors`` 5..100 as well. Too few components merge cell types in the graph;
      too many add noise to the distances.
    - ``objective="reconstruction"``: the rank whose PCA reconstruction of the expression
      best predicts held-out molecules — the denoising rank of
      :func:`sc_noise2self.pp.denoise` with ``method="pca"``. On shallow data it is the
      lower one: a component whose signal is below the noise of each single gene can
      still separate cells once its many genes are summed in a distance.

    The PCA is then computed on all counts with that many components, on the scale
    scanpy users compute it on — ``sc.pp.normalize_total(target_sum=1e4)``,
    ``sc.pp.log1p``, the highly variable genes — and written where ``sc.pp.pca`` writes it,
    so ``sc.pp.neighbors``, ``sc.tl.umap`` and ``sc.tl.leiden`` run on it unchanged.

    Parameters
    ----------
    adata
        Annotated data matrix with raw UMI counts in ``X`` or in ``layer`` (cells ×
        genes, sparse or dense). With ``objective="reconstruction"`` the counts may be a
        dask array or a backed or lazily read AnnData, calibrated and fitted block by
        block; ``"neighbors"`` needs them in memory.
    layer
        Layer holding the raw counts (e.g. ``"counts"`` when ``X`` is already
        log-normalised); ``adata.X`` when None.
    key_added
        As in ``sc.pp.pca``: None writes ``obsm["X_pca"]``, ``varm["PCs"]`` and
        ``uns["pca"]``; a name writes all three under that name.
    objective
        ``"neighbors"`` or ``"reconstruction"`` (see above).
    grid
        Numbers of components to compare. Default: 3, 5, 7, 10, 15, 20, 30, 40, 50 for
        ``"neighbors"``; 1..20, then steps up to 100 for ``"reconstruction"`` (both capped
        by the data size). Where the choice is the default grid's largest value, the sweep
        goes on to about 1.4× and 2× that value (twice at most, within the data size), on the
        same splits; a given grid is swept as it is.
    mask_var
        Genes to compute the PCA on, as in ``sc.pp.pca``: a boolean ``var`` column, a
        boolean array, or None for all genes; by default ``var["highly_variable"]`` when
        that column exists. Depth normalisation uses each cell's total over all genes.
    {calibration}
    {select}
    random_state
        Seed of the splits and of the randomised SVD (above 4,096 genes).
    {progress}
    overwrite
        Replace a PCA that this package did not write (e.g. from ``sc.pp.pca``); by
        default that is refused before any work.
    copy
        Return a modified copy instead of writing to ``adata``.

    Returns
    -------
    Returns None if ``copy=False``, else a new AnnData. Sets, all at once (an error leaves
    ``adata`` as it was):

    ``adata.obsm["X_pca" | key_added]`` : :class:`numpy.ndarray` (dtype ``float32``)
        PCA coordinates, cells × chosen number of components. Cells without counts
        are left out of the fit and placed where an all-zero cell projects.
    ``adata.varm["PCs" | key_added]`` : :class:`numpy.ndarray`
        Loadings, genes × components; zero for genes outside ``mask_var``.
    ``adata.uns["pca" | key_added]`` : :class:`dict`
        ``variance``, ``variance_ratio`` and ``params`` as ``sc.pp.pca`` writes them, and
        ``calibration``: the loss curve and choice (as ``pp.denoise`` records it; for
        ``"neighbors"`` over ``(n_neighbors, n_pcs)`` pairs; plot it with
        ``n2s.pl.calibration(adata, key="pca")``).
    """
    settings = Settings.from_arguments(locals(), loss="mse", empty="drop", chunk_size=None)
    names = ("X_pca", "PCs", "pca") if key_added is None else (check_key(key_added),) * 3
    obsm_key, varm_key, uns_key = names
    check_flag(copy, "copy")
    if objective not in ("neighbors", "reconstruction"):
        msg = f"objective must be 'neighbors' or 'reconstruction', got {objective!r}."
        raise ValueError(msg)
    if objective == "neighbors" and is_blockwise(counts_of(adata, layer)[0]):
        msg = (
            "pp.pca(objective='neighbors') scores a neighbour graph for every number of components, which needs the "
            "counts in memory (a dask array or a backed or lazily read AnnData was given). Use "
            "objective='reconstruction' (block by block; then sc_noise2self.pp.neighbors chooses n_neighbors block "
            "by block), or load the counts (`adata.to_memory()`)."
        )
        raise ValueError(msg)
    genes = _genes(adata, mask_var, calibration)
    shape = (adata.n_obs, adata.n_vars if genes is None else int(genes[0].sum()))
    if objective == "neighbors":
        settings = replace(settings, grid=_graph_grid(grid, shape))
    name, calibrated = resolve_method("knn" if objective == "neighbors" else "pca", random_state)
    start = logg.info("computing PCA, its number of components calibrated by self-supervision")
    check_targets(
        adata, uns_key, {"obsm": [obsm_key], "varm": [varm_key]}, function="pca", read_layer=None, overwrite=overwrite
    )
    with progress_bar(bar_label("pca", calibration), progress=settings.progress) as bar:
        add_steps(bar, 1)  # the final fit, last
        fit = _calibrate(adata, name, calibrated, settings, layer=layer, genes=genes, bar=bar)
        if grid is None and calibration == "mcv":  # the default grid: on past its largest number of components
            recalibrate = partial(_calibrate, adata, name, calibrated, layer=layer, genes=genes, bar=bar)
            fit = _sweep_on(fit, settings, recalibrate, graph=objective == "neighbors", shape=shape)
        result = fit.result
        warn_about_choice(result, axes=("n_pcs", "n_comps"))  # pp.pca's n_neighbors axis is not the user's
        n_comps = int(np.atleast_1d(result.best)[-1])  # (n_neighbors, n_pcs) or the rank
        _, pca = resolve_method("pca", random_state)
        fitted, data = fit_at(fit.source, pca, n_comps, settings, totals=fit.totals, partition=None)
        scores = np.concatenate(data.map(fitted.scores))
        bar.update(1)
    coordinates, loadings = _pca_outputs(pca.mean_, scores, pca.components_, fit.source, adata.shape)
    variance = pca.singular_values_**2 / max(data.shape[0] - 1, 1)
    mask_name = None if genes is None else genes[1]
    params = {"zero_center": True, "use_highly_variable": mask_name == "highly_variable", "mask_var": mask_name}
    if layer is not None:
        params["layer"] = layer
    record = {
        "params": params,
        "variance": variance,
        "variance_ratio": variance / _total_variance(data),
        "calibration": _record(fit, layer, genes) | {"objective": objective},
        "version": package_version(),
    }
    log_choice(result, f"n_comps={n_comps}")
    adata = writable(adata, copy)
    commit(adata, uns_key, {"obsm": {obsm_key: coordinates}, "varm": {varm_key: loadings}}, record, function="pca")
    logg.info(
        "    finished",
        time=start,
        deep=(
            f"added\n    {obsm_key!r}, the PCA coordinates (adata.obsm)\n    {varm_key!r}, the loadings (adata.varm)\n"
            f"    {uns_key!r}, variance, variance ratio and the calibration (adata.uns)"
        ),
    )
    return adata if copy else None


@adapts_threads
@shared_docs
def neighbors(
    adata: AnnData,
    *,
    layer: str | None = None,
    key_added: str | None = None,
    grid: ArrayLike | None = None,
    n_pcs: int | None = None,
    use_rep: str | None = None,
    mask_var: str | ArrayLike | None = "highly_variable",
    calibration: Calibration = "mcv",
    split_fraction: float = 0.9,
    n_splits: int | None = None,
    max_scored_cells: int | None = 10_000,
    sampling: Sampling = "poisson",
    dispersion: float | None = None,
    depth: Depth | None = None,
    n_groups: int = 10,
    transform: TransformName = "log1p",
    target_sum: float | None = 1e4,
    method: Literal["umap", "gauss"] = "umap",
    transformer: Any = None,
    metric: str | Callable[..., float] = "euclidean",
    metric_kwds: Mapping[str, Any] | None = None,
    select: Select = "min",
    random_state: RandomState = 0,
    progress: bool | None = None,
    overwrite: bool = False,
    copy: bool = False,
) -> AnnData | None:
    """Neighbourhood graph with the number of neighbours chosen by the data.

    A drop-in for :func:`scanpy.pp.neighbors` that answers "how many neighbours?": the
    ``n_neighbors`` whose kNN average — each cell's expression replaced by the mean over
    itself and its ``n_neighbors - 1`` nearest cells in the first ``n_pcs`` principal
    components — best predicts held-out data. With ``calibration="mcv"`` the principal
    components, the neighbours and the average all come from the training molecules and are
    scored on the held-out molecules; with ``"genes"`` (Noise2Self) each group of genes is
    averaged over neighbours found from the other genes, never reading the cell's own
    values. The graph is then computed by ``sc.pp.neighbors`` itself, on ``use_rep``, with
    that ``n_neighbors`` and the given ``method``, ``transformer`` and ``metric``, and
    written where it writes it.

    The calibrated quantity is the uniform kNN average; scanpy's connectivities weigh the
    same neighbours by the UMAP (or Gaussian) kernel, so the choice sets the neighbourhood
    size, not the weights.

    Parameters
    ----------
    adata
        Annotated data matrix with raw UMI counts in ``X`` or in ``layer`` (in memory, or a
        dask array or a backed or lazily read AnnData, read block by block) and an embedding
        in ``obsm`` (by default ``"X_pca"``, e.g. from
        :func:`sc_noise2self.pp.pca` or ``sc.pp.pca``).
    layer
        Layer holding the raw counts; ``adata.X`` when None.
    key_added
        As in ``sc.pp.neighbors``: None writes ``obsp["distances"]``,
        ``obsp["connectivities"]`` and ``uns["neighbors"]``; a name writes
        ``obsp[f"{key_added}_distances"]``, ``obsp[f"{key_added}_connectivities"]`` and ``uns[key_added]``.
    grid
        Values of ``n_neighbors`` to compare (each at least 2, the cell included); default
        2..5, then steps up to 100.
    n_pcs
        Components of ``use_rep`` the graph uses, and of the calibration's own embedding;
        default all of ``use_rep``'s (at most 100 for the calibration).
    use_rep
        ``obsm`` key of the embedding the graph is built on; default ``"X_pca"``.
    mask_var
        Genes the calibration's embedding and average use, as in :func:`pca`.
    {calibration}
    method
        ``sc.pp.neighbors``' connectivity kernel: ``"umap"`` or ``"gauss"``.
    transformer
        ``sc.pp.neighbors``' neighbour search for the graph (e.g. ``"sklearn"``,
        ``"pynndescent"`` or a ``KNeighborsTransformer``); the calibration searches
        exactly up to 100,000 cells and with pynndescent above.
    metric
        ``sc.pp.neighbors``' distance for the graph.
    metric_kwds
        Options of ``metric``.
    {select}
    random_state
        Seed of the splits, of the calibration's neighbour search and of
        ``sc.pp.neighbors`` (an int below 2**32 is passed to it as is).
    {progress}
    overwrite
        Replace a graph that this package did not write (e.g. from ``sc.pp.neighbors``);
        by default that is refused before any work.
    copy
        Return a modified copy instead of writing to ``adata``.

    Returns
    -------
    Returns None if ``copy=False``, else a new AnnData. Sets, all at once, what
    ``sc.pp.neighbors(adata, n_neighbors=<chosen>, ...)`` sets:

    ``adata.obsp["distances" | f"{key_added}_distances"]`` : :class:`scipy.sparse.csr_matrix`
        Distances to each cell's ``n_neighbors - 1`` nearest neighbours.
    ``adata.obsp["connectivities" | f"{key_added}_connectivities"]`` : :class:`scipy.sparse.csr_matrix`
        Weighted adjacency matrix of the graph.
    ``adata.uns["neighbors" | key_added]`` : :class:`dict`
        scanpy's record (``params``, the ``obsp`` keys) and ``calibration``: the loss
        curve over ``n_neighbors`` and the choice.
    """
    settings = Settings.from_arguments(locals(), loss="mse", empty="drop", chunk_size=None)
    uns_key = "neighbors" if key_added is None else check_key(key_added)
    obsp_keys = (
        ("distances", "connectivities") if key_added is None else (f"{uns_key}_distances", f"{uns_key}_connectivities")
    )
    check_flag(copy, "copy")
    rep = "X_pca" if use_rep is None else use_rep
    embedding = _embedding(adata, rep, n_pcs)
    graph_args = _graph_args(
        adata,
        rep,
        embedding,
        n_pcs,
        method=method,
        transformer=transformer,
        metric=metric,
        metric_kwds=metric_kwds,
        random_state=random_state,
    )
    name, denoiser = resolve_method("knn", random_state, n_pcs=min(embedding.shape[1], 100))
    start = logg.info("computing neighbors, their number calibrated by self-supervision")
    genes = _genes(adata, mask_var, calibration)
    check_targets(adata, uns_key, {"obsp": list(obsp_keys)}, function="neighbors", read_layer=None, overwrite=overwrite)
    with progress_bar(bar_label("knn", calibration), progress=settings.progress) as bar:
        add_steps(bar, 1)  # the final graph, last
        fit = _calibrate(adata, name, denoiser, settings, layer=layer, genes=genes, bar=bar)
        result = fit.result
        warn_about_choice(result)
        n_neighbors = int(result.best)
        graph = _scanpy_graph(adata.obs_names, rep, embedding, n_neighbors, n_pcs, graph_args)
        bar.update(1)
    record = {
        **graph.uns["neighbors"],
        "calibration": _record(fit, layer, genes),
        "version": package_version(),
    }
    record["connectivities_key"], record["distances_key"] = obsp_keys[1], obsp_keys[0]
    outputs = {"obsp": {obsp_keys[0]: graph.obsp["distances"], obsp_keys[1]: graph.obsp["connectivities"]}}
    log_choice(result, f"n_neighbors={n_neighbors}")
    adata = writable(adata, copy)
    commit(adata, uns_key, outputs, record, function="neighbors")
    logg.info(
        "    finished",
        time=start,
        deep=(
            f"added to `.uns[{uns_key!r}]`\n    `.obsp[{obsp_keys[0]!r}]`, distances for each pair of neighbors\n"
            f"    `.obsp[{obsp_keys[1]!r}]`, weighted adjacency matrix"
        ),
    )
    return adata if copy else None


_GRAPH_PCS = np.array([3, 5, 7, 10, 15, 20, 30, 40, 50])
_GRAPH_NEIGHBORS = np.array([5, 10, 15, 20, 30, 50, 100])


def _sweep_on(
    fit: Calibrated,
    settings: Settings,
    recalibrate: Callable[[Settings], Calibrated],
    *,
    graph: bool,
    shape: tuple[int, int],
) -> Calibrated:
    """Sweep on while the choice is the largest number of components of the default grid and the data allow more.

    Each time, about 1.4× and 2× the largest value are added and the whole grid is calibrated
    again on the same splits (the embedding of a longer grid has more components, so the curve is
    that of passing the longer grid from the start). ``shape``: the cells and genes the default
    grid was made for.
    """
    axis = "n_pcs" if graph else "n_comps"
    most = min(*shape, *fit.source.shape) - 1
    for _ in range(SWEEPS_ON):
        result = fit.result
        values = np.unique(result.grid.reshape(len(result.grid), -1)[:, result.grid_names.index(axis)])
        more = np.unique([v for v in (round(1.4 * values[-1]), 2 * values[-1]) if values[-1] < v <= most])
        if axis not in result.grid_edge or not more.size:
            break
        logg.info(f"    {axis}={values[-1]} is the largest swept and the loss still falls: sweeping on to {more[-1]}")
        longer = np.r_[values, more]
        fit = recalibrate(replace(settings, grid=_graph_grid(longer, shape) if graph else longer))
    return fit


def _graph_grid(grid: ArrayLike | None, shape: tuple[int, int]) -> np.ndarray:
    """``(n_neighbors, n_pcs)`` pairs: every ``n_pcs`` of ``grid`` (default 3..50) with 5..100 neighbours.

    On data too small for the defaults, every value the data allow (``n_pcs`` up to
    ``min(shape) - 1``, ``n_neighbors`` up to the number of cells).
    """
    most_pcs = min(shape) - 1
    if grid is None:
        grid = _GRAPH_PCS[_GRAPH_PCS <= most_pcs]
        grid = grid if grid.size else np.arange(1, most_pcs + 1)
    n_pcs = check_int_grid(grid, low=1, high=most_pcs, name="n_pcs")
    n_neighbors = _GRAPH_NEIGHBORS[_GRAPH_NEIGHBORS <= shape[0]]
    n_neighbors = n_neighbors if n_neighbors.size else np.arange(2, shape[0] + 1)
    return grid_product(n_neighbors=check_int_grid(n_neighbors, low=2, high=shape[0], name="n_neighbors"), n_pcs=n_pcs)


def _genes(adata: AnnData, mask_var: object, calibration: str) -> tuple[np.ndarray, str] | None:
    """Return the genes to calibrate on and their name (None: all genes)."""
    if calibration not in ("mcv", "genes"):
        msg = f"calibration must be 'mcv' or 'genes', got {calibration!r}."
        raise ValueError(msg)
    return resolve_mask_var(adata, mask_var)


def _calibrate(
    adata: AnnData,
    name: str,
    denoiser: Denoiser,
    settings: Settings,
    *,
    layer: str | None,
    genes: tuple[np.ndarray, str] | None,
    bar: Any,
) -> Calibrated:
    """Run the calibration on the counts (of the masked genes, normalised by all genes' totals)."""
    X, what = counts_of(adata, layer)
    return calibrate(X, name, denoiser, settings, what=what, bar=bar, mask=None if genes is None else genes[0])


def _record(fit: Calibrated, layer: str | None, genes: tuple[np.ndarray, str] | None) -> dict[str, Any]:
    """Return the calibration's record, kept inside scanpy's ``uns`` entry."""
    return calibration_record(
        fit.result,
        cells=fit.source.cells,
        genes=fit.source.genes,
        layer=layer,
        mask_var=None if genes is None else genes[1],
        denoiser=fit.denoiser,
    )


def _pca_outputs(
    mean: np.ndarray,
    scores: np.ndarray,
    components: np.ndarray,
    source: Any,
    shape: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates of every cell (float32) and loadings of every gene, from the PCA of the kept ones."""
    coordinates = np.empty((shape[0], scores.shape[1]), dtype=np.float32)
    if source.cells is None:
        coordinates[:] = scores
    else:  # an empty cell's values are all zero: it projects to -mean @ components.T
        coordinates[source.cells] = scores
        coordinates[~source.cells] = -mean @ components.T
    loadings = np.zeros((shape[1], components.shape[0]))
    loadings[source.gene_index()] = components.T
    return coordinates, loadings


def _total_variance(data: Data) -> float:
    """Return the sum of the genes' variances (ddof 1), block by block: the denominator of ``variance_ratio``."""

    def moments(block: Block) -> tuple[np.ndarray, float]:
        values = block.values
        squares = values.multiply(values).sum() if sparse.issparse(values) else np.square(values).sum()
        return np.asarray(values.sum(axis=0), dtype=np.float64).ravel(), float(squares)

    sums, squares = data.reduce(moments, lambda a, b: (a[0] + b[0], a[1] + b[1]))
    n = data.shape[0]
    return float((squares - np.square(sums).sum() / n) / max(n - 1, 1))


def _embedding(adata: AnnData, rep: str, n_pcs: int | None) -> np.ndarray:
    """Return the embedding the graph is built on (its first ``n_pcs`` columns), checked before any work."""
    if not isinstance(rep, str) or rep not in adata.obsm:
        available = ", ".join(repr(k) for k in adata.obsm) or "none"
        msg = (
            f"use_rep={rep!r} is not in adata.obsm (available: {available}); run sc_noise2self.pp.pca(adata) "
            "(or sc.pp.pca) first, or pass the obsm key of another embedding."
        )
        raise ValueError(msg)
    embedding = np.asarray(adata.obsm[rep])
    if embedding.ndim != 2 or embedding.shape[1] < 1 or not np.isfinite(embedding).all():
        msg = f"adata.obsm[{rep!r}] must be a finite cells × components array, got shape {embedding.shape}."
        raise ValueError(msg)
    if n_pcs is not None:
        if check_positive_int(n_pcs, "n_pcs") > embedding.shape[1]:
            msg = (
                f"n_pcs={n_pcs} exceeds the {embedding.shape[1]} columns of adata.obsm[{rep!r}]; pass n_pcs="
                f"{embedding.shape[1]} or fewer, or None for all of them."
            )
            raise ValueError(msg)
        embedding = embedding[:, :n_pcs]
    return embedding


def _graph_args(
    adata: AnnData,
    rep: str,
    embedding: np.ndarray,
    n_pcs: int | None,
    *,
    method: object,
    transformer: object,
    metric: object,
    metric_kwds: object,
    random_state: RandomState,
) -> dict[str, Any]:
    """``sc.pp.neighbors``' settings, checked before the calibration runs.

    What scanpy alone can tell (a metric or transformer it does not accept) is found by
    building the graph of the first 100 cells with these settings, so a mistake costs
    a moment, not a calibration.
    """
    if method not in ("umap", "gauss"):
        msg = f"method must be 'umap' or 'gauss' (sc.pp.neighbors' connectivity kernel), got {method!r}."
        raise ValueError(msg)
    if isinstance(transformer, str) and transformer not in ("pynndescent", "sklearn"):
        msg = (
            "transformer must be 'pynndescent', 'sklearn', a KNeighborsTransformer-like instance or None, "
            f"got {transformer!r}."
        )
        raise ValueError(msg)
    if not (transformer is None or isinstance(transformer, str)):
        params = transformer.get_params() if hasattr(transformer, "get_params") else {}
        if not hasattr(transformer, "fit_transform") or "n_neighbors" not in params:
            msg = (
                "A transformer instance needs fit_transform and an n_neighbors parameter (as sklearn's "
                f"KNeighborsTransformer), which is set to the calibrated value; got {transformer!r}."
            )
            raise ValueError(msg)
    if not (callable(metric) or isinstance(metric, str)):
        msg = f"metric must be a distance name (e.g. 'euclidean', 'cosine') or a function, got {metric!r}."
        raise ValueError(msg)
    if metric_kwds is not None and not isinstance(metric_kwds, Mapping):
        msg = f"metric_kwds must be a mapping of the metric's options or None, got {metric_kwds!r}."
        raise ValueError(msg)
    if isinstance(random_state, int | np.integer) and 0 <= int(random_state) < 2**32:
        seed = int(random_state)
    else:
        seed = method_seed(random_state) or 0
    args = {
        "method": method,
        "transformer": transformer,
        "metric": metric,
        "metric_kwds": {} if metric_kwds is None else dict(metric_kwds),
        "random_state": seed,
    }
    trial = min(adata.n_obs, 100)
    if trial < 3:
        msg = f"A neighbourhood graph needs at least 3 cells, got {adata.n_obs}."
        raise ValueError(msg)
    try:
        with warnings.catch_warnings():  # a trial: only a refusal matters here
            warnings.simplefilter("ignore")
            _scanpy_graph(adata.obs_names[:trial], rep, embedding[:trial], min(5, trial - 1), n_pcs, args)
    except Exception as error:  # scanpy's or its search library's refusal, said before any work
        msg = f"sc.pp.neighbors refuses these settings (method, transformer, metric, metric_kwds): {error}"
        raise ValueError(msg) from error
    return args


def _scanpy_graph(
    obs_names: pd.Index, rep: str, embedding: np.ndarray, n_neighbors: int, n_pcs: int | None, args: dict[str, Any]
) -> AnnData:
    """``sc.pp.neighbors`` on an AnnData holding only the embedding, so nothing of the user's is touched yet.

    A transformer instance is cloned with ``n_neighbors`` set (scanpy reads the number of
    neighbours from the instance).
    """
    import anndata as ad
    import pandas as pd
    import scanpy as sc

    transformer = args["transformer"]
    if not (transformer is None or isinstance(transformer, str)):
        from sklearn.base import clone

        transformer = clone(transformer).set_params(n_neighbors=n_neighbors)
    holder = ad.AnnData(obs=pd.DataFrame(index=obs_names.copy()), obsm={rep: embedding})
    with sc.settings.verbosity.override("warning"):  # this function logs the step itself
        sc.pp.neighbors(
            holder, n_neighbors=n_neighbors, n_pcs=None, use_rep=rep, **{**args, "transformer": transformer}
        )
    if n_pcs is not None:
        holder.uns["neighbors"]["params"]["n_pcs"] = n_pcs
    return holder
