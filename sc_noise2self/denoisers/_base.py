"""The Denoiser protocol: the one seam every method plugs into.

The calibration engine knows nothing of a method, and a method knows nothing of AnnData.

A denoiser is fitted once with the whole grid it will be asked about, so it can prepare
the work for all values at once (one SVD at the largest rank, one graph for all diffusion
times, …). The fitted object is a *sweep*: it produces predictions at every grid value in
grid order, each step reusing the previous one, so the whole grid costs about one fit at
its largest value, and never more than a block of cells × genes is dense at a time.

A sweep offers one of two loop orders, whichever is cheaper for the method:

- ``sweep_blocks(rows)``: for one block of cells, yield ``(value, prediction)`` for every
  grid value (PCA adds components to the same block in place);
- ``sweep_values()``: yield ``(value, predict)`` for every grid value, where
  ``predict(rows)`` returns the block's prediction at that value (diffusion multiplies the
  operator once more between values, for all cells).

Grid values are ints, or tuples of ints for a grid over several settings; a grid is a 1-D
int array, or a 2-D array with one column per setting (``grid_names``).

Optional, found by ``getattr``: ``block_losses(rows, scorer)`` returns the per-cell MSE of a
block at every grid value (cells × values), predicting and scoring each cell's row in one
compiled parallel region (see :class:`sc_noise2self._loss.RowScorer` and
:func:`sc_noise2self._loss.squared_error_row`); the MCV engine then uses it instead of
scoring value by value, which on a busy machine waits for descheduled threads once per block
instead of once per block and value. ``fuses()`` may say it cannot here (e.g. too little
memory); the losses must be the same bytes either way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import Any, Self

    import numpy as np

    from .._types import ArrayLike

__all__ = [
    "BlockSweep",
    "Blockwise",
    "CountModel",
    "Denoiser",
    "GenePartition",
    "LowRank",
    "MaskedPartition",
    "Streaming",
    "ValueSweep",
]

GridValue = int | tuple[int, ...]


@runtime_checkable
class BlockSweep(Protocol):
    """A fitted sweep that loops over grid values inside a block of cells."""

    def sweep_blocks(self, rows: slice) -> Iterator[tuple[GridValue, np.ndarray]]:
        """Yield ``(value, prediction)`` for cells ``rows`` at each grid value, in order.

        The prediction array may be updated in place by the next step: read it before
        advancing the iterator.
        """


@runtime_checkable
class ValueSweep(Protocol):
    """A fitted sweep that loops over blocks of cells inside a grid value."""

    def sweep_values(self) -> Iterator[tuple[GridValue, Callable[[slice], np.ndarray]]]:
        """Yield ``(value, predict)`` at each grid value in order; ``predict(rows)`` gives a block.

        A predictor need only work until the iterator advances (the autoencoder keeps
        training the same network). It may carry a ``train_loss`` attribute, shown in the
        progress bar.
        """


@runtime_checkable
class Denoiser(Protocol):
    """What :func:`sc_noise2self.tl.calibrate` needs from a method.

    Follow scikit-learn's estimator rules: no logic in ``__init__``, fitted attributes
    end in ``_``, ``fit`` returns ``self``, ``random_state`` is stored as given.
    ``fit`` returns a :class:`BlockSweep` or :class:`ValueSweep` (usually ``self``).
    """

    def grid_names(self, grid: np.ndarray) -> tuple[str, ...]:
        """Name of each grid axis, e.g. ``("n_comps",)``; used in plots and ``uns``."""

    def default_grid(self, shape: tuple[int, int]) -> np.ndarray:
        """Return the grid used when the caller gives none, for data of this shape."""

    def check_grid(self, grid: ArrayLike, shape: tuple[int, int]) -> np.ndarray:
        """Validate a grid for data of this shape and return it in sweep order.

        Raises ``ValueError`` with what to do when a value is out of range.
        """

    def fit(self, X: ArrayLike, grid: np.ndarray) -> Self:
        """Fit on the normalised data, preparing every value of ``grid``."""

    def predict(self, rows: slice, value: GridValue) -> np.ndarray:
        """Denoised values for cells ``rows`` at one grid value (after :meth:`fit`)."""


@runtime_checkable
class LowRank(Protocol):
    """A fitted denoiser whose output is ``offset + scores @ loadings`` (so it can be stored factored)."""

    def factors(self, value: GridValue) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(offset (genes,), scores (cells × k), loadings (k × genes))`` at one grid value, after ``fit``."""


@runtime_checkable
class GenePartition(Protocol):
    """A denoiser that also offers the J-invariant sweep for Noise2Self (``calibration="genes"``)."""

    def held_out_genes(
        self, X: ArrayLike, genes: np.ndarray, cell_groups: np.ndarray, grid: np.ndarray
    ) -> BlockSweep | ValueSweep:
        """Sweep predicting genes ``genes`` (boolean mask) without looking at them (Noise2Self).

        The prediction for a cell's masked genes must not depend on the values of those
        genes in that cell, so that the loss against the data itself has the same
        minimiser as the loss against the truth. ``cell_groups`` (a group index per
        cell) lets a method learn from the other groups' values of the masked genes; a
        method may set a class attribute ``n_cell_groups`` to ask for that many groups
        (default 5).
        """


@runtime_checkable
class CountModel(Protocol):
    """A denoiser that may train on the raw counts behind the normalised data (a count likelihood).

    The engine calls ``fit_counts`` instead of ``fit`` wherever the counts are at hand (each
    MCV split's training part, the refit on all counts). The output stays on the
    transformed scale, ``E[T(s X)]`` of the predicted rates, so it is scored and written
    like every other method's.
    """

    def fit_counts(
        self,
        X: ArrayLike,
        grid: np.ndarray,
        *,
        counts: Any,
        scales: np.ndarray,
        transform: str,
        max_rate: float | None = None,
    ) -> BlockSweep | ValueSweep:
        """Fit on ``X = T(scales · counts)`` (``counts``: CSR), preparing every value of ``grid``.

        ``max_rate``: the largest rate the output must cover (default: the largest total).
        """


@runtime_checkable
class MaskedPartition(Protocol):
    """A denoiser trained by masking (Noise2Self's own loop) over a fixed partition of the genes.

    One fit serves every gene group: training hides random groups in its inputs, and the
    fitted sweep's predictions are J-invariant for the whole partition — each group
    predicted from an input where that group is hidden. The calibration scores every gene
    at once, and the final output after ``calibration="genes"`` is the same J-invariant
    function refitted on all the data.
    """

    def fit_masked(self, X: ArrayLike, groups: np.ndarray, grid: np.ndarray) -> BlockSweep | ValueSweep:
        """Fit by masked training over ``groups`` (a group index per gene), preparing every value of ``grid``."""


@runtime_checkable
class Streaming(Protocol):
    """A denoiser trained from minibatches streamed out of blocks of cells (dask or backed input).

    ``source.bounds`` lists the blocks' cells and ``source.load(blocks)`` reads several
    blocks at once (values and the counts behind them), so that an epoch reads every block
    once. The fitted sweep's predictors score one block at a time (``predict.block(values,
    counts, rows)``), and after the refit :meth:`predict_block` gives the output of any
    block, which the engine wraps in a lazy layer.
    """

    def fit_stream(
        self,
        source: Any,
        grid: np.ndarray,
        *,
        shape: tuple[int, int],
        scales: np.ndarray,
        transform: str,
        max_rate: float,
    ) -> ValueSweep:
        """Fit from ``source``, preparing every value of ``grid`` (``shape``: kept cells × genes)."""

    def predict_block(self, values: Any, counts: Any, rows: slice, value: GridValue) -> np.ndarray:
        """Output for the block of cells ``rows`` from its values and counts, at one grid value."""


@runtime_checkable
class Blockwise(Protocol):
    """A denoiser fitted from statistics merged over blocks of cells (dask or backed input).

    Each block's prediction must come from its own rows and the fitted statistics (or,
    for a :class:`CellGraph`, from per-cell state kept in memory), so that no pass needs
    more than one block of cells × genes in memory. The output's scores come from each
    block (:class:`RowProjection`) or from the cross-cell state (:class:`CellGraph`).
    """

    def block_stats(self, X: ArrayLike) -> Any:
        """Statistics of one block of cells of the normalised data."""

    def merge_stats(self, a: Any, b: Any) -> Any:
        """Statistics of two blocks together (associative)."""

    def fit_stats(self, stats: Any, grid: np.ndarray) -> Self:
        """Fit from the statistics of all blocks, preparing every value of ``grid``."""

    def sweep_rows(self, X: ArrayLike, rows: slice) -> Iterator[tuple[GridValue, np.ndarray]]:
        """Yield ``(value, prediction)`` for the block of cells ``X`` at each grid value, in order.

        ``rows`` are the block's cells in the whole matrix (used by :class:`CellGraph` denoisers).
        """


@runtime_checkable
class RowProjection(Protocol):
    """A :class:`Blockwise` denoiser whose output scores for a block come from its own rows."""

    def row_scores(self, X: ArrayLike, value: GridValue) -> np.ndarray:
        """Low-rank scores of the block of cells ``X`` at one grid value."""

    def loadings(self, value: GridValue) -> tuple[np.ndarray, np.ndarray]:
        """``(offset (genes,), loadings (k × genes))`` at one grid value: output = offset + scores @ loadings."""


@runtime_checkable
class CellGraph(Protocol):
    """A :class:`Blockwise` denoiser whose prediction for a cell also reads other cells.

    After :meth:`Blockwise.fit_stats`, one more pass embeds every block
    (:meth:`block_embedding`, cells × a few components) and the embeddings of all cells
    are fitted together in memory (:meth:`fit_embedding`, e.g. a kNN graph); then
    :meth:`Blockwise.sweep_rows` predicts a block from that state and its ``rows``.
    The output is factored: ``factors(value)`` as for :class:`LowRank`, after refitting.
    """

    def block_embedding(self, X: ArrayLike) -> np.ndarray:
        """Embedding of one block of cells of the normalised data (cells × components)."""

    def fit_embedding(self, embedding: np.ndarray) -> Self:
        """Fit the cross-cell state from the embedding of every cell, in cell order."""
