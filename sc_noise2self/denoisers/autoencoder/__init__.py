"""Autoencoder denoising with torch, calibrated over bottleneck width and training epochs.

The network (:mod:`._module`, a pure ``torch.nn.Module``) and its training loop (:mod:`._train`)
stand apart from this estimator, which adapts them to the denoiser contract; ``torch`` is imported
only when a network is built or trained.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import numpy as np
from scipy import sparse

from ..._numerics.checks import check_flag, check_int_grid, check_number, check_positive_int
from ..._numerics.split import seed_sequence
from .._base import BaseDenoiser, Predicted, Step, Tags
from .._registry import register

if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

    from ..._types import ArrayLike
    from .._base import Block, Data, GridValue, Partition

__all__ = ["Autoencoder", "require_torch"]

_MAX_EPOCHS = 10_000
_DEFAULT_EPOCHS = 20
_INFER_BATCH = 1024  # cells per inference batch, fixed so that outputs do not depend on batch_size
LIKELIHOODS = ("auto", "normal", "poisson", "negative_binomial")
"""The training loss: squared error on the transformed scale, or a count likelihood of the decoder's rates
(``"auto"``: Poisson when the fit is given the counts, squared error otherwise)."""
FILLS = ("zero", "mean", "donor")
"""What stands in for hidden genes in masked training: zero, the gene's mean, or another cell's value."""


def require_torch() -> None:
    """Raise an ``ImportError`` that says how to install torch when it is missing."""
    try:
        import torch  # noqa: F401
    except ImportError:
        msg = (
            "The autoencoder needs torch, which is not installed: install the package's autoencoder extra "
            "(`pip install '.[autoencoder]'` from a clone) or torch itself (a CPU-only build: "
            "`pip install torch --index-url https://download.pytorch.org/whl/cpu`)."
        )
        raise ImportError(msg) from None


class _Predictor:
    """One trained network's output for a block of the fitted cells (in memory: read by position)."""

    def __init__(self, owner: Autoencoder, module: object) -> None:
        self.owner, self.module = owner, module
        self._cache: dict[int, np.ndarray] = {}

    def __call__(self, block: Block) -> np.ndarray:
        if self.owner.X_ is not None:
            return self.owner._infer(self.module, block.rows, self._cache)
        return self.owner._infer_block(self.module, block.values, block.counts, block.rows)


class _Ensemble:
    """The mean output of several networks trained alike from different seeds (``n_fits``)."""

    def __init__(self, members: list[_Predictor]) -> None:
        self.members = members

    def _mean(self, outputs: Iterator[np.ndarray]) -> np.ndarray:
        first = next(outputs)
        if len(self.members) == 1:
            return first
        total = first.astype(np.float64)
        for out in outputs:  # in member order: the same bytes on every call
            total += out
        return (total / len(self.members)).astype(np.float32)

    def __call__(self, block: Block) -> np.ndarray:
        return self._mean(member(block) for member in self.members)


@register("autoencoder")
class Autoencoder(BaseDenoiser):
    """Denoise with an MLP autoencoder: the reconstruction through a narrow bottleneck.

    Calibrated over ``(bottleneck, epochs)``: for each bottleneck width one network is
    trained epoch by epoch and scored after every epoch in the grid, so the held-out loss
    per width per epoch comes from one training run per width, and the chosen epoch is a
    self-supervised early stop. On the default grid (widths 4..128 × epochs 1..20), where
    epoch 20 is best, the chosen width trains on to epoch 40 (and 80, where 40 is best), and
    where width 128 (or 4) is best, a network twice (half) as wide is trained too
    (:meth:`grid_beyond`).
    Minibatches are sliced from the sparse matrix and made dense one batch at a time;
    inference streams blocks of cells.

    With ``calibration="genes"`` it trains by Noise2Self's own loop (:meth:`fit_masked`):
    each cell of a minibatch has a random group of the gene partition hidden in its input
    (``mask_fill``), and the loss is taken on the hidden entries only; the output predicts
    each group from the cell's other genes (one forward pass per group), so it is
    J-invariant, and it denoises values that are not counts (``transform="none"``).

    Parameters
    ----------
    bottleneck
        Width of the code layer when the grid is over epochs only.
    hidden
        Widths of the encoder's hidden layers (the decoder mirrors them).
    dropout
        Dropout after every hidden layer.
    batch_size
        Cells per minibatch.
    learning_rate
        Adam's learning rate.
    weight_decay
        Adam's L2 penalty.
    device
        ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``. On CUDA each buffer's
        nonzeros are copied to the device once and minibatches are made dense there.
    autocast
        On CUDA, run the forward pass in bfloat16 autocast (losses and outputs in float32).
    likelihood
        The training loss: ``"normal"`` (squared error on the transformed scale), or a count
        likelihood, ``"poisson"`` or ``"negative_binomial"`` (a learned dispersion per gene):
        the decoder then predicts each gene's share of the cell's counts, its rates are
        that share times the cell's total, and it is trained on the raw counts. Its output
        is the expected transformed value of those rates, ``E[T(s X)]`` with
        ``X ~ Poisson(μ)`` — what every method estimates, so MCV scores it like the others
        (``loss="poisson"`` scores it on the count scale). Count likelihoods need the
        molecule split (MCV). ``"auto"`` (default): Poisson when the fit is given the counts
        (MCV, and the refit after it), squared error otherwise (``calibration="genes"``,
        :meth:`fit` on values alone); the fitted ``likelihood_`` says which.
    n_fits
        Networks trained (from different seeds) for the output after the calibration; the
        output is their mean. One network's output varies with its seed about as much as
        between neighbouring settings; the mean of three scores better and varies less. The
        calibration trains one network per width.
    block_cells
        In memory: train from blocks of this many cells, as from dask chunks or a backed
        file (None: one block, a random order of all cells each epoch). Dask and backed
        input are read in their own blocks; with the same blocks and seed the two give the
        same network and output.
    buffer_cells
        When training from several blocks: blocks are read in a random order into buffers
        of at least this many cells, whose cells are shuffled among themselves.
    mask_fill
        Noise2Self training (``calibration="genes"``) only: what stands in for a hidden
        gene group in the input — ``"zero"``, ``"mean"`` (the gene's mean over cells), or
        ``"donor"`` (the values of another cell, fixed per cell).
    adapt_threads
        On CPU, train each epoch with at most one torch thread per core that other
        processes leave free (read before an epoch, at most once a second; Linux, where
        this process may use every core). It only lowers torch's thread count, which
        changes no bit of the result: a guard against the slow tail of threads that compete
        with another busy process. False keeps torch's count throughout.
    random_state
        Seed of the weights, dropout and batch order; training is deterministic on CPU and on
        CUDA (the same seed gives the same bytes on the same device; dropout masks differ
        between the two).
    """

    tags = Tags(gene_partition="masked", uses_counts=True, blockwise=True)
    axis_labels: ClassVar[dict[str, str]] = {"epochs": "training epochs", "bottleneck": "bottleneck width"}

    def __init__(
        self,
        *,
        bottleneck: int = 32,
        hidden: tuple[int, ...] = (256,),
        dropout: float = 0.1,
        batch_size: int = 128,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.0,
        device: str = "auto",
        autocast: bool = True,
        likelihood: str = "auto",
        n_fits: int = 3,
        block_cells: int | None = None,
        buffer_cells: int = 16_384,
        mask_fill: str = "zero",
        adapt_threads: bool = True,
        random_state: object = 0,
    ) -> None:
        self.bottleneck = bottleneck
        self.hidden = hidden
        self.dropout = dropout
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.device = device
        self.autocast = autocast
        self.likelihood = likelihood
        self.n_fits = n_fits
        self.block_cells = block_cells
        self.buffer_cells = buffer_cells
        self.mask_fill = mask_fill
        self.adapt_threads = adapt_threads
        self.random_state = random_state

    # -- grid ---------------------------------------------------------------------------
    def grid_names(self, grid: np.ndarray) -> tuple[str, ...]:
        return ("epochs",) if np.ndim(grid) == 1 else ("bottleneck", "epochs")

    def default_grid(self, shape: tuple[int, int]) -> np.ndarray:
        """Bottlenecks 4..128 (doubling, below the number of genes) × epochs 1..20."""
        widths = [w for w in (4, 8, 16, 32, 64, 128) if w < shape[1]] or [max(1, shape[1] - 1)]
        return np.array([(w, e) for w in widths for e in range(1, _DEFAULT_EPOCHS + 1)], dtype=np.int64)

    def grid_beyond(self, grid: np.ndarray, best: GridValue, shape: tuple[int, int]) -> np.ndarray | None:
        """Sweep on where the chosen width's last epoch, or the widest or narrowest width, is chosen.

        The last epoch: the chosen width trains on, to twice its epochs (the networks of the
        other widths are not trained again). The widest width: a network twice as wide
        (at most the narrowest hidden layer and below the number of genes, where these leave
        room) is trained over the chosen width's epochs; the narrowest: one half as wide.
        """
        if grid.ndim == 1:
            return np.arange(int(best) + 1, 2 * int(best) + 1) if best == grid.max() else None
        width, epoch = (int(v) for v in best)
        trained = int(grid[grid[:, 0] == width, 1].max())
        more = [(width, e) for e in range(epoch + 1, 2 * epoch + 1) if epoch == trained]
        wider = min(2 * width, min(self.hidden, default=shape[1]), shape[1] - 1)
        if width == grid[:, 0].max() and wider > width:
            more += [(wider, e) for e in range(1, trained + 1)]
        if width == grid[:, 0].min() and width > 1:
            more += [(width // 2, e) for e in range(1, trained + 1)]
        return np.array(more, dtype=np.int64) if more else None

    def check_params(self) -> None:
        """Raise a ``ValueError`` for a setting out of range, an ``ImportError`` without torch (before any work)."""
        super().check_params()
        require_torch()
        check_positive_int(self.bottleneck, "bottleneck")
        hidden = self.hidden if isinstance(self.hidden, tuple | list) else None
        if hidden is None or not all(
            isinstance(w, int | np.integer) and not isinstance(w, bool) and w >= 1 for w in hidden
        ):
            msg = f"hidden must be a tuple of positive layer widths, e.g. (256,), got {self.hidden!r}."
            raise ValueError(msg)
        check_number(self.dropout, "dropout", low=0.0, high=1.0, open_high=True, example="0.1")
        check_positive_int(self.batch_size, "batch_size")
        check_flag(self.autocast, "autocast")
        check_flag(self.adapt_threads, "adapt_threads")
        check_positive_int(self.n_fits, "n_fits")
        if self.block_cells is not None:
            check_positive_int(self.block_cells, "block_cells")
        check_positive_int(self.buffer_cells, "buffer_cells")
        # torch's optimiser holds them as float32: bounded well inside its range
        check_number(self.learning_rate, "learning_rate", low=0.0, high=1e30, open_low=True, example="1e-3")
        check_number(self.weight_decay, "weight_decay", low=0.0, high=1e30, example="0")
        if not isinstance(self.device, str) or not (
            self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")
        ):
            msg = f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}."
            raise ValueError(msg)
        if not isinstance(self.likelihood, str) or self.likelihood not in LIKELIHOODS:
            msg = f"likelihood must be one of {LIKELIHOODS}, got {self.likelihood!r}."
            raise ValueError(msg)
        if not isinstance(self.mask_fill, str) or self.mask_fill not in FILLS:
            msg = f"mask_fill must be one of {FILLS}, got {self.mask_fill!r}."
            raise ValueError(msg)

    def check_grid(self, grid: ArrayLike, shape: tuple[int, int]) -> np.ndarray:
        """Epochs (1-D) or ``(bottleneck, epochs)`` pairs (2-D), sorted by bottleneck then epochs."""
        self.check_params()
        values = np.asarray(grid)
        if values.ndim == 1:
            if self.bottleneck > shape[1]:
                msg = (
                    f"bottleneck={self.bottleneck} is wider than the data's {shape[1]} genes, so the network "
                    "need not denoise; pass a narrower bottleneck."
                )
                raise ValueError(msg)
            return check_int_grid(values, low=1, high=_MAX_EPOCHS, name="epochs")
        if values.ndim != 2 or values.shape[1] != 2 or values.shape[0] == 0:
            msg = f"A 2-D autoencoder grid holds (bottleneck, epochs) pairs, got shape {values.shape}."
            raise ValueError(msg)
        check_int_grid(values[:, 0], low=1, high=shape[1], name="bottleneck")
        check_int_grid(values[:, 1], low=1, high=_MAX_EPOCHS, name="epochs")
        values = np.unique(values.astype(np.int64), axis=0)
        return values[np.lexsort((values[:, 1], values[:, 0]))]

    def _plan(self, grid: np.ndarray) -> dict[int, np.ndarray]:
        """Epochs to report, per bottleneck width."""
        if grid.ndim == 1:
            return {int(self.bottleneck): grid}
        return {int(w): grid[grid[:, 0] == w, 1] for w in np.unique(grid[:, 0])}

    # -- fitting ------------------------------------------------------------------------
    def fit(self, data: Data, grid: np.ndarray, *, partition: Partition | None = None) -> Autoencoder:
        """Prepare training on ``data``; the networks are trained during the sweep (or for the output).

        In memory the values (and, for a count likelihood, the counts behind them) are kept for
        minibatches; data read block by block are streamed, one pass per epoch (see
        :func:`~._train.train_epoch`). With the same blocks (``block_cells`` in memory) and seed,
        training and output are the same bytes either way. With a ``partition``, Noise2Self's
        masked training over its gene groups (:meth:`fit_masked`).
        """
        if partition is not None:
            return self.fit_masked(data, partition.groups, grid)
        if data.in_memory:
            counts = data.counts()
            if self.likelihood not in ("auto", "normal") and counts is None:
                msg = (
                    f"likelihood={self.likelihood!r} trains on raw counts, and these values are not counts: pass raw "
                    "counts, or likelihood='normal'."
                )
                raise ValueError(msg)
            if self.likelihood == "normal" or counts is None:
                return self._prepare(sparse.csr_matrix(data.matrix(), dtype=np.float32), None, grid)
            counts = sparse.csr_matrix(counts, dtype=np.float32)
            self._prepare(sparse.csr_matrix(data.matrix(), dtype=np.float32), counts, grid)
            self.library_ = np.asarray(counts.sum(axis=1), dtype=np.float64).ravel()
        else:
            self._prepare(None, None, grid, source=_Buffers(data.stream()), shape=data.shape)
        if self.likelihood_ != "normal":
            self._expect(data.scales, data.transform, data.max_rate)
        return self

    def _prepare(
        self,
        X: sparse.csr_matrix | None,
        counts: sparse.csr_matrix | None,
        grid: np.ndarray,
        *,
        source: Any = None,
        shape: tuple[int, int] | None = None,
    ) -> Autoencoder:
        from ._train import MemorySource, block_bounds, resolve_device

        self.device_ = resolve_device(self.device)
        self.likelihood_ = self.likelihood
        if self.likelihood == "auto":  # a stream reads the counts with the values
            self.likelihood_ = "poisson" if counts is not None or source is not None else "normal"
        self.X_ = X
        self.shape_ = X.shape if shape is None else shape
        self.grid_ = np.asarray(grid)
        self.train_loss_: dict[tuple[int, int], float] = {}
        self._trained: tuple[tuple[int, int], _Ensemble] | None = None
        self.masker_ = None
        self.expected_ = None
        self.library_ = None
        self._device_output = None
        if source is None:
            source = MemorySource(X, counts, block_bounds(X.shape[0], self.block_cells))
        self.source_ = source
        return self

    def _expect(self, scales: np.ndarray, transform: str, max_rate: float) -> None:
        from ..._numerics.transform import expected_values

        scales = np.asarray(scales, dtype=np.float64)
        self.expected_ = (expected_values(transform, scales=scales, max_rate=max_rate), scales)

    def fit_masked(self, data: Data, groups: np.ndarray, grid: np.ndarray) -> Autoencoder:
        """Prepare Noise2Self training over the gene partition ``groups`` (a group index per gene).

        Each minibatch hides one random group per cell and takes the loss on it; every
        prediction (in the sweep and after) is J-invariant: a gene group is predicted from
        the cell's other genes only.
        """
        from ._mask import Masker

        if self.likelihood not in ("auto", "normal"):
            msg = (
                f"likelihood={self.likelihood!r} needs the molecule split (its rates are trained on counts): use "
                "calibration='mcv', or likelihood='normal' with calibration='genes'."
            )
            raise ValueError(msg)
        self._prepare(sparse.csr_matrix(data.matrix(), dtype=np.float32), None, grid)
        self.masker_ = Masker(groups, self.mask_fill, self.X_, self._seed(0))
        return self

    def _seed(self, width: int, member: int = 0) -> int:
        key = (width,) if member == 0 else (width, member)
        return int(seed_sequence(self.random_state, *key).generate_state(1)[0])

    def _training(self, width: int, epochs: np.ndarray, member: int = 0) -> Iterator[tuple[int, object]]:
        """Train one network of this width (``member`` of an ensemble); yield it after every epoch listed."""
        import torch

        from ._module import AutoencoderModule
        from ._train import free_core_threads, train_epoch

        seed = self._seed(width, member)
        generator = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):  # nn.Linear draws a first init from the global RNG
            module = AutoencoderModule(
                self.shape_[1],
                width,
                tuple(self.hidden),
                self.dropout,
                generator,
                gene_dispersion=self.likelihood_ == "negative_binomial",
            )
        module.to(self.device_)
        optimizer = torch.optim.Adam(module.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay)
        rng = np.random.default_rng(seed)
        wanted = set(int(e) for e in epochs)
        for epoch in range(1, int(epochs.max()) + 1):
            with free_core_threads(self.device_, enabled=self.adapt_threads):
                loss = train_epoch(
                    module,
                    self.source_,
                    optimizer,
                    batch_size=self.batch_size,
                    buffer_cells=self.buffer_cells,
                    rng=rng,
                    device=self.device_,
                    masker=self.masker_,
                    likelihood=self.likelihood_,
                    autocast=self.autocast,
                )
            self.train_loss_[(width, epoch)] = loss
            if epoch in wanted:
                yield epoch, module

    def _infer(self, module: object, rows: slice, cache: dict[int, np.ndarray] | None = None) -> np.ndarray:
        from ._train import infer

        output = None
        if self.expected_ is not None and self._output_on_device():
            if self._device_output is None:  # the fitted cells' library sizes and scales, on the device once
                self._device_output = self._on_device(self.library_, self.expected_[1])
            output = self._device_output
        out = infer(
            module,
            self.X_,
            rows,
            batch_size=_INFER_BATCH,
            device=self.device_,
            cache=cache,
            masker=self.masker_,
            autocast=self.autocast,
            bounds=self.source_.bounds,
            output=output,
        )
        return out if self.expected_ is None or output is not None else self._expected(out, self.library_[rows], rows)

    def _infer_block(
        self, module: object, values: sparse.csr_matrix, counts: sparse.csr_matrix | None, rows: slice
    ) -> np.ndarray:
        from ._train import infer

        values = sparse.csr_matrix(values, dtype=np.float32)
        library = None if self.expected_ is None else np.asarray(counts.sum(axis=1), dtype=np.float64).ravel()
        output = None
        if library is not None and self._output_on_device():
            output = self._on_device(library, self.expected_[1][rows])
        out = infer(
            module,
            values,
            slice(None),
            batch_size=_INFER_BATCH,
            device=self.device_,
            autocast=self.autocast,
            output=output,
        )
        return out if library is None or output is not None else self._expected(out, library, rows)

    def _output_on_device(self) -> bool:
        """Whether a count decoder's output step runs where the network does (on CUDA; on the CPU, compiled)."""
        return self.device_.type == "cuda"

    def _on_device(self, library: np.ndarray, scales: np.ndarray) -> object:
        """Return the count decoder's output step on the device, for cells with these library sizes and scales."""
        from ._train import DeviceExpected

        return DeviceExpected(self.expected_[0], library, scales, self.device_)

    def _expected(self, logits: np.ndarray, library: np.ndarray, rows: slice) -> np.ndarray:
        """Return the decoder's rates, ``library · softmax(logits)``, as expected transformed values."""
        expected, scales = self.expected_
        return expected.from_logits(logits, library, scales[rows])

    def _value(self, width: int, epoch: int) -> int | tuple[int, int]:
        return int(epoch) if self.grid_.ndim == 1 else (int(width), int(epoch))

    order = "values"

    def values(self) -> Iterator[Step]:
        """Per width, train once and yield a predictor after every epoch of the grid, with its training loss."""
        for width, epochs in self._plan(self.grid_).items():
            for epoch, module in self._training(width, epochs):
                yield Step(self._value(width, epoch), _Predictor(self, module), self.train_loss_[(width, epoch)])

    def _ensemble(self, value: int | tuple[int, int]) -> _Ensemble:
        """Return the ``n_fits`` networks trained to ``value`` (trained on first use)."""
        width, epoch = (self.bottleneck, value) if np.ndim(value) == 0 else tuple(value)
        key = (int(width), int(epoch))
        if self._trained is None or self._trained[0] != key:
            members = []
            for member in range(self.n_fits):
                for _, module in self._training(key[0], np.array([key[1]]), member):
                    members.append(_Predictor(self, module))
            self._trained = (key, _Ensemble(members))
        return self._trained[1]

    def output(self, value: int | tuple[int, int]) -> Predicted:
        """Return the mean output of the ``n_fits`` networks trained to ``value`` (trained on first use)."""
        return Predicted(lambda block: self._ensemble(value)(block))


class _Buffers:
    """Training data read block by block (dask or disk): ``load(blocks)`` gives them as one buffer."""

    def __init__(self, stream: Any) -> None:
        self.stream, self.bounds = stream, stream.bounds

    def load(self, blocks: list[int]) -> Any:
        from ._train import Buffer

        parts = self.stream.load(blocks)
        return Buffer(
            sparse.vstack([p.values for p in parts], format="csr"),
            sparse.vstack([p.counts for p in parts], format="csr"),
            np.concatenate([np.arange(p.rows.start, p.rows.stop) for p in parts]),
        )
