"""The contract every method plugs into: a :class:`Denoiser` is fitted on :class:`Data` and is a :class:`Sweep`.

The calibration engine knows no method, and a method knows no AnnData: it sees the data it is
fitted on as :class:`Data` (transformed values and the counts behind them, in blocks of cells),
and is asked for predictions and losses block by block.

A denoiser is fitted once with the whole grid it will be asked about, so it can prepare the work
for every value at once (one SVD at the largest rank, one graph for all diffusion times, one
network trained epoch by epoch). The fitted denoiser is a *sweep*: it gives predictions at every
grid value in grid order, each step reusing the last, so the whole grid costs about one fit at
its largest value. A sweep offers one of two loop orders (:attr:`Sweep.order`):

- ``"blocks"``: for one block of cells, every grid value in turn (:meth:`Sweep.predictions`;
  PCA adds components to the same block in place);
- ``"values"``: for every grid value in turn, a predictor of any block (:meth:`Sweep.values`;
  the autoencoder trains further between values).

It may also score a block at every grid value in one compiled pass (:meth:`Sweep.losses`), which
must give the same bytes as scoring its predictions one by one. After the calibration the engine
fits the chosen value on all the data and asks for :meth:`Sweep.output`.

What a method can do is declared as data, in its class's :class:`Tags`, never inferred from which
methods it has.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, NamedTuple, Protocol, runtime_checkable

import numpy as np
from sklearn.base import BaseEstimator

from .._numerics.checks import check_int_grid, check_seed
from .._numerics.rows import low_rank_rows

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from scipy import sparse

    from .._numerics.loss import DataScorer, RowScorer
    from .._types import ArrayLike

__all__ = [
    "ArrayData",
    "BaseDenoiser",
    "Block",
    "Data",
    "Denoiser",
    "LowRank",
    "Partition",
    "Predicted",
    "Step",
    "Sweep",
    "Tags",
    "check_int_grid",
]

GridValue = int | tuple[int, ...]
ScoreKind = Literal["held_out", "data"]
"""What a fused :meth:`Sweep.losses` scores against: MCV's held-out part after the depth conversion
(a :class:`~sc_noise2self._numerics.loss.RowScorer`), or the data themselves (a
:class:`~sc_noise2self._numerics.loss.DataScorer`: the gene partition's squared error)."""


@dataclass(frozen=True)
class Tags:
    """What a method can do, declared on its class (``tags = Tags(...)``)."""

    low_rank: bool = False
    """Its output is ``offset + scores @ loadings`` (:class:`LowRank`): it can be stored factored, and
    with ``mask_var`` the other genes are denoised through its scores."""
    gene_partition: Literal["held_out", "masked"] | None = None
    """Noise2Self (``calibration="genes"``): ``"held_out"``, one fit per gene group that never sees the
    group; ``"masked"``, one fit trained by hiding groups (Noise2Self's own loop), refitted so."""
    uses_counts: bool = False
    """It may train on the raw counts behind the values (a count likelihood)."""
    blockwise: bool = False
    """It fits from blocks of cells (dask arrays, backed AnnData) without the whole matrix in memory."""
    in_memory_output: bool = False
    """Its output for a cell reads other cells' data anywhere in the matrix: data read block by block are
    calibrated (predicting only the cells scored, :attr:`Data.scored`) but not denoised."""
    n_cell_groups: int = 5
    """Cell groups of the gene partition's cross-fitting (at least 2)."""


class Block(NamedTuple):
    """A block of cells of the data a denoiser was fitted on."""

    rows: slice
    """The block's cells among the fitted cells."""
    values: sparse.csr_matrix
    """Their transformed values (float, canonical CSR)."""
    counts: sparse.csr_matrix | None
    """The raw counts behind them (None when the values are not counts)."""


class Partition(NamedTuple):
    """The gene partition of ``calibration="genes"``."""

    groups: np.ndarray
    """A group index per gene."""
    held_out: int | None
    """The group to predict without seeing it (``gene_partition="held_out"``); None for masked training
    over every group at once."""
    cell_groups: np.ndarray
    """A group index per cell: a prediction for a cell may learn the held-out genes from the other groups."""

    @property
    def genes(self) -> np.ndarray:
        """Boolean mask of the held-out genes."""
        return self.groups == self.held_out


class Step(NamedTuple):
    """One grid value of a sweep in value order."""

    value: GridValue
    predict: Callable[[Block], np.ndarray]
    """Prediction of a block at this value; valid until the sweep moves on."""
    train_loss: float | None = None
    """Shown beside the held-out loss in the progress bar (a network's training loss)."""


class LowRank(NamedTuple):
    """Output ``offset + scores @ loadings``, stored factored when the dense layer would not fit."""

    offset: np.ndarray
    """Per gene (genes,)."""
    scores: Callable[[Block], np.ndarray]
    """A block's scores (cells × k, float64)."""
    loadings: np.ndarray
    """k × genes."""

    def block(self, block: Block) -> np.ndarray:
        """Return the block's output, float32, each row on its own."""
        return low_rank_rows(self.offset, self.scores(block), self.loadings)


class Predicted(NamedTuple):
    """Output computed block by block (dense)."""

    predict: Callable[[Block], np.ndarray]

    def block(self, block: Block) -> np.ndarray:
        """Return the block's output, float32."""
        return self.predict(block)


@runtime_checkable
class Data(Protocol):
    """The data a denoiser is fitted on: transformed values and their counts, read in blocks of cells.

    In memory the data are one block (:meth:`matrix` gives it whole); from dask or disk they are
    the input's blocks, read on each pass.
    """

    shape: tuple[int, int]
    scales: np.ndarray
    """Each cell's multiplier before the transform: ``values = T(scales · counts)``."""
    transform: str
    max_rate: float
    """The largest rate an output on the count scale must cover."""
    in_memory: bool
    scored: np.ndarray | None
    """The cells the calibration will ask predictions for (sorted positions), when not all of them."""

    def matrix(self) -> sparse.csr_matrix:
        """All the values (in memory only; a ``ValueError`` says what to do otherwise)."""

    def counts(self) -> sparse.csr_matrix | None:
        """All the counts behind the values (in memory only)."""

    def block(self, rows: slice = ...) -> Block:
        """Return the cells ``rows`` (all by default) as one :class:`Block` (in memory only)."""

    def map(self, fn: Callable[[Block], Any]) -> list[Any]:
        """``fn`` of every block, in cell order."""

    def reduce(self, fn: Callable[[Block], Any], merge: Callable[[Any, Any], Any]) -> Any:
        """``fn`` of every block, merged pairwise (``merge`` associative)."""

    def stream(self) -> Any:
        """Return the blocks to train from, read a few at a time.

        The stream has ``bounds`` (slices in cell order) and ``load(indices)``, the :class:`Block` of each.
        """


class ArrayData:
    """:class:`Data` in memory: one block of values, and the counts behind them.

    What the engine fits a method on when the input is in memory; build one to fit a denoiser
    directly, e.g. ``PCA().fit(ArrayData(values), grid)``.

    Parameters
    ----------
    values
        Transformed values, cells × genes (sparse or dense; kept as float64 CSR).
    counts
        The raw counts behind them, for a method that trains on counts; None when they are not counts.
    scales
        Each cell's multiplier before the transform, ``values = T(scales · counts)`` (default 1).
    transform
        The transform applied (``"log1p"``, ``"sqrt"`` or ``"none"``).
    max_rate
        The largest rate an output on the count scale must cover (default: the largest total count, plus one).
    """

    in_memory = True
    scored = None

    def __init__(
        self,
        values: ArrayLike,
        counts: ArrayLike | None = None,
        *,
        scales: np.ndarray | None = None,
        transform: str = "none",
        max_rate: float | None = None,
    ) -> None:
        from scipy import sparse

        self._values = values if sparse.issparse(values) and values.format == "csr" else sparse.csr_matrix(values)
        self._counts = None if counts is None else sparse.csr_matrix(counts)
        self.shape = (int(self._values.shape[0]), int(self._values.shape[1]))
        self.scales = np.ones(self.shape[0]) if scales is None else np.asarray(scales, dtype=np.float64)
        self.transform = transform
        if max_rate is None:
            totals = np.zeros(1) if self._counts is None else np.asarray(self._counts.sum(axis=1)).ravel()
            max_rate = float(totals.max()) + 1.0
        self.max_rate = max_rate
        self._whole = Block(slice(0, self.shape[0]), self._values, self._counts)

    def matrix(self) -> sparse.csr_matrix:
        return self._values

    def counts(self) -> sparse.csr_matrix | None:
        return self._counts

    def block(self, rows: slice = slice(None)) -> Block:
        """Return the cells ``rows`` (all by default) as one :class:`Block`."""
        start, stop, _ = rows.indices(self.shape[0])
        if (start, stop) == (0, self.shape[0]):
            return self._whole
        rows = slice(start, stop)
        return Block(rows, self._values[rows], None if self._counts is None else self._counts[rows])

    def map(self, fn: Callable[[Block], Any]) -> list[Any]:
        return [fn(self._whole)]

    def reduce(self, fn: Callable[[Block], Any], merge: Callable[[Any, Any], Any]) -> Any:
        return fn(self._whole)

    def stream(self) -> _OneBlock:
        return _OneBlock(self._whole)


class _OneBlock(NamedTuple):
    """A stream of one block: all of data in memory."""

    whole: Block

    @property
    def bounds(self) -> list[slice]:
        return [self.whole.rows]

    def load(self, blocks: list[int]) -> list[Block]:
        return [self.whole for _ in blocks]


@runtime_checkable
class Sweep(Protocol):
    """A fitted denoiser: predictions at every grid value, block by block, and the output at one.

    Subclass it for its defaults (loop order ``"blocks"``, no fused scoring, nothing reported).
    """

    grid_: np.ndarray
    order: Literal["blocks", "values"] = "blocks"
    """Which loop the sweep offers: :meth:`predictions` per block, or :meth:`values`."""

    def predictions(self, block: Block) -> Iterator[tuple[GridValue, np.ndarray]]:
        """Yield ``(value, prediction)`` for the block at every grid value (order ``"blocks"``).

        A prediction may be updated in place by the next step: read it before advancing.
        """
        raise NotImplementedError

    def values(self) -> Iterator[Step]:
        """Yield a :class:`Step` per grid value (order ``"values"``)."""
        raise NotImplementedError

    def fuses(self, kind: ScoreKind) -> bool:
        """Return whether :meth:`losses` scores blocks against ``kind`` here (order ``"blocks"``); no by default."""
        return False

    def losses(self, block: Block, scorer: RowScorer | DataScorer) -> np.ndarray:
        """Return the per-cell loss of the block at every grid value, predicted and scored in one pass.

        ``scorer``: a :class:`~sc_noise2self._numerics.loss.RowScorer` for ``"held_out"``, a
        :class:`~sc_noise2self._numerics.loss.DataScorer` for ``"data"``.
        """
        raise NotImplementedError

    def output(self, value: GridValue) -> LowRank | Predicted:
        """Return the output at ``value`` (after a fit at that value)."""
        msg = f"{type(self).__name__} gives no output (it is fitted for the calibration only)."
        raise NotImplementedError(msg)

    def report(self) -> dict[str, float]:
        """Return what the fit found that the calibration keeps per MCV split (numbers); nothing by default."""
        return {}


@runtime_checkable
class Denoiser(Protocol):
    """What :func:`sc_noise2self.tl.calibrate` needs from a method (see :class:`BaseDenoiser`)."""

    tags: ClassVar[Tags] = Tags()

    def check_params(self) -> None:
        """Raise a ``ValueError`` for a setting out of range (before any work): here its ``random_state``.

        A subclass that checks more calls this first.
        """
        if "random_state" in self.get_params(deep=False):
            check_seed(self.random_state)

    def check_data(self, shape: tuple[int, int], *, in_memory: bool) -> None:
        """Raise a ``ValueError`` when data of this shape (in memory or read in blocks) cannot be fitted."""

    def grid_names(self, grid: np.ndarray) -> tuple[str, ...]:
        """Return the name of each grid axis, e.g. ``("n_comps",)``; used in plots and ``uns``."""
        raise NotImplementedError

    def default_grid(self, shape: tuple[int, int]) -> np.ndarray:
        """Return the grid used when the caller gives none, for data of this shape."""
        raise NotImplementedError

    def check_grid(self, grid: ArrayLike, shape: tuple[int, int]) -> np.ndarray:
        """Return the grid checked for data of this shape, in sweep order (a ``ValueError`` says what is wrong)."""
        raise NotImplementedError

    def grid_beyond(self, grid: np.ndarray, best: GridValue, shape: tuple[int, int]) -> np.ndarray | None:
        """Return grid values to sweep on to after a calibration over the default grid (or the grid so far).

        ``best``: the choice on ``grid``, which says whether it lies on an edge; ``shape``: the
        calibrated data's cells × genes (the values must pass :meth:`check_grid`). Only where
        going on is cheap and may pay; the values are added to the grid and calibrated on the
        same splits. None (the default): the sweep ends with the grid.
        """
        return None

    def fit(self, data: Data, grid: np.ndarray, *, partition: Partition | None = None) -> Sweep:
        """Fit on ``data``, preparing every value of ``grid``; return the sweep (usually ``self``).

        With a ``partition`` (the gene partition), a prediction for a gene group must not depend
        on that group's values in that cell (J-invariance).
        """
        raise NotImplementedError


class BaseDenoiser(BaseEstimator, Denoiser, Sweep):
    """Base of the package's denoisers: scikit-learn's estimator contract, and the defaults of the contract.

    ``__init__`` stores its keyword arguments and nothing else; :meth:`get_params`,
    :meth:`set_params`, ``repr`` and :func:`sklearn.base.clone` come from
    :class:`~sklearn.base.BaseEstimator`. Fitted attributes end in ``_``. The engine clones an
    instance before fitting it, so the user's object is never changed.

    A subclass sets :attr:`tags` and implements :meth:`grid_names`, :meth:`default_grid`,
    :meth:`check_grid` and :meth:`fit`, then the sweep's :attr:`order` with
    :meth:`predictions` or :meth:`values`, and :meth:`output`; it registers itself by name
    with :func:`~sc_noise2self.denoisers.register`.
    """

    axis_labels: ClassVar[dict[str, str]] = {}
    """What each grid axis means, for plots (e.g. ``{"n_comps": "number of principal components"}``)."""
