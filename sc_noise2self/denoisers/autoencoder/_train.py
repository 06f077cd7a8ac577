"""Training and inference loops of the autoencoder: minibatches sliced from CSR, densified per batch.

On CUDA the sparse matrix's arrays are copied to the device once per buffer of cells and
each minibatch is densified there (:class:`DeviceRows`), so a step moves its row numbers
rather than a dense batch; on the CPU batches are densified by scipy.
"""

from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch

from ..._numerics.machine import fewer_threads, free_cores

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from scipy import sparse

    from ..._numerics.transform import ExpectedValues
    from ._mask import Masker
    from ._module import AutoencoderModule

__all__ = [
    "Buffer",
    "DeviceExpected",
    "DeviceRows",
    "MemorySource",
    "batch_edges",
    "block_bounds",
    "buffers",
    "free_core_threads",
    "infer",
    "negative_log_likelihood",
    "resolve_device",
    "rows_on",
    "to_device",
    "train_epoch",
]


def resolve_device(device: str) -> torch.device:
    """``"auto"`` is CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        msg = f"device must be 'auto', 'cpu' or 'cuda', got {device!r}."
        raise ValueError(msg)
    if device.startswith("cuda") and not torch.cuda.is_available():
        msg = "device='cuda' was asked for, but torch sees no CUDA device; use device='auto' or 'cpu'."
        raise ValueError(msg)
    return torch.device(device)


class DeviceRows:
    """A CSR matrix's nonzeros on a torch device; dense float32 rows of it are gathered there.

    Calling it with row numbers returns those rows as a dense ``(len(rows), n_genes)``
    tensor, equal to ``X[rows].toarray()`` in float32: each nonzero is written once, so
    the result does not depend on the order the device writes in.
    """

    def __init__(self, X: sparse.csr_matrix, device: torch.device) -> None:
        if not X.has_canonical_format:  # duplicates summed as toarray() sums them; never the caller's matrix
            X = X.copy()
            X.sum_duplicates()
        self.device, self.n_genes = device, X.shape[1]
        self.indptr = np.asarray(X.indptr, dtype=np.int64)
        self.indices = torch.from_numpy(np.asarray(X.indices, dtype=np.int32)).to(device)
        self.data = torch.from_numpy(np.asarray(X.data, dtype=np.float32)).to(device)

    @staticmethod
    def nbytes(X: sparse.csr_matrix) -> int:
        """Device memory the nonzeros of ``X`` take (float32 values, int32 gene indices)."""
        return 8 * X.nnz

    def __call__(self, rows: np.ndarray) -> torch.Tensor:
        starts = self.indptr[rows]
        lengths = self.indptr[rows + 1] - starts
        total = int(lengths.sum())
        on = {"device": self.device}
        owner = torch.repeat_interleave(
            torch.arange(rows.size, **on), torch.from_numpy(lengths).to(**on), output_size=total
        )
        shift = torch.from_numpy(starts - (np.cumsum(lengths) - lengths)).to(**on)  # nonzero k of batch row i
        positions = torch.arange(total, **on) + shift[owner]
        out = torch.zeros((rows.size, self.n_genes), dtype=torch.float32, **on)
        out[owner, self.indices[positions].long()] = self.data[positions]
        return out


_STEP_ENTRIES = 2**23
"""Entries of a count decoder's output step done at once on the device (:class:`DeviceExpected`)."""


class DeviceExpected:
    """A count decoder's output step on the device: ``E[T(s X)]`` at the rates ``library · softmax(logits)``.

    The same arithmetic as :meth:`~sc_noise2self._transform.ExpectedValues.from_logits` (a
    float64 softmax after subtracting the row's largest logit, the table read linearly in
    ``log1p(μ)`` and between scale rows in ``log s``), in torch, so on CUDA the output step
    runs where the logits are and only the float32 result is copied back. Equal to the
    compiled host pass to float64 rounding. ``library`` and ``scales`` hold one entry per
    cell; a batch is addressed by its first and last cell.
    """

    def __init__(self, expected: ExpectedValues, library: np.ndarray, scales: np.ndarray, device: torch.device):
        self.identity = expected.transform == "none"
        idx, weight = expected.cell_rows(scales)
        self.table = torch.as_tensor(np.asarray(expected.table, dtype=np.float64), device=device)
        self.several = self.table.shape[0] > 1
        self.inv_step = float(expected.inv_step)
        self.idx = torch.as_tensor(idx, device=device)
        self.weight = torch.as_tensor(weight, device=device)
        self.library = torch.as_tensor(np.asarray(library, dtype=np.float64), device=device)

    def __call__(self, logits: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        """Return the float32 output of cells ``lo:hi`` from their logits (a tensor on the device).

        In chunks of at most ``_STEP_ENTRIES`` entries, so that its float64 intermediates stay
        under ~1 GB however many genes there are (each cell's output is its own row's).
        """
        rows = max(1, _STEP_ENTRIES // max(logits.shape[1], 1))
        if logits.shape[0] <= rows:
            return self._step(logits, lo, hi)
        starts = range(0, hi - lo, rows)
        return torch.cat([self._step(logits[a : a + rows], lo + a, min(lo + a + rows, hi)) for a in starts])

    def _step(self, logits: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        logits = logits.float()
        shares = torch.exp((logits - logits.max(dim=1, keepdim=True).values).double())
        rates = shares * (self.library[lo:hi] / shares.sum(dim=1))[:, None]
        weight = self.weight[lo:hi, None]
        if self.identity:
            return (rates * weight).float()
        n = self.table.shape[1]
        pos = torch.clamp(torch.log1p(torch.clamp(rates, min=0.0)) * self.inv_step, max=n - 1.0)
        missing = torch.isnan(pos)  # a NaN logit: NaN out, as on the host (the writers refuse it)
        pos = pos.masked_fill(missing, 0.0)
        j = torch.clamp(pos.long(), max=n - 2)
        frac = pos - j
        row = self.idx[lo:hi, None].expand_as(j)
        value = self._row_value(row, j, frac)
        if self.several:
            value = value + weight * (self._row_value(row + 1, j, frac) - value)
        return value.masked_fill(missing, float("nan")).float()

    def _row_value(self, row: torch.Tensor, j: torch.Tensor, frac: torch.Tensor) -> torch.Tensor:
        low = self.table[row, j]
        return low + frac * (self.table[row, j + 1] - low)


def to_device(X: sparse.csr_matrix, rows: np.ndarray | slice, device: torch.device) -> torch.Tensor:
    """Dense float32 batch of ``rows`` on ``device``; on CUDA only its nonzeros are copied, then densified there."""
    if device.type == "cuda":
        part = X[rows]
        return DeviceRows(part, device)(np.arange(part.shape[0]))
    return torch.from_numpy(np.asarray(X[rows].toarray(), dtype=np.float32))


def rows_on(X: sparse.csr_matrix, device: torch.device) -> Callable[[np.ndarray], torch.Tensor]:
    """Return a function giving dense rows of ``X`` on ``device``, for many minibatches of one buffer.

    On CUDA the buffer's nonzeros are copied to the device once when they take at most a
    quarter of its free memory (each batch is then gathered there); otherwise, and on the
    CPU, each batch is densified from ``X`` on the host. The values are the same either way.
    """
    if device.type == "cuda" and DeviceRows.nbytes(X) <= torch.cuda.mem_get_info(device)[0] // 4:
        return DeviceRows(X, device)
    return lambda rows: to_device(X, rows, device)


class _Load:
    """The machine's free cores, read at most once a second (a reading takes ~10 ms; small epochs take less)."""

    every_s = 1.0

    def __init__(self) -> None:
        self.read_at, self.free = -float("inf"), None

    def free_cores(self) -> int | None:
        now = time.monotonic()
        if now - self.read_at >= self.every_s:
            self.read_at, self.free = now, free_cores()
        return self.free


_LOAD = _Load()


@contextmanager
def free_core_threads(device: torch.device, *, enabled: bool = True) -> Iterator[int]:
    """Within the block, torch on CPU uses at most one thread per core other processes leave free.

    Torch's threads meet at a barrier in every operation; on a busy machine each waits for
    a descheduled thread, and a small network's many short operations then take several
    times as long as on one thread. The load is read at most once a second. Only lowers
    the count (never below one, never above the user's ``torch.set_num_threads``) and
    restores it after; results are the same bytes with any count. Yields the number of
    threads in use.
    """
    threads = torch.get_num_threads()
    fewer = fewer_threads(threads, _LOAD.free_cores() if enabled and device.type == "cpu" and threads > 1 else None)
    if fewer is None:
        yield threads
        return
    torch.set_num_threads(fewer)
    try:
        yield fewer
    finally:
        torch.set_num_threads(threads)


def _autocast(device: torch.device, enabled: bool = True) -> torch.autocast | nullcontext:
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


class Buffer(NamedTuple):
    """Cells of one or more blocks, read together and shuffled among themselves."""

    values: sparse.csr_matrix
    """The network's input (normalised values), rows in buffer order."""
    counts: sparse.csr_matrix | None
    """The raw counts behind them, for a count likelihood."""
    rows: np.ndarray
    """Each row's position among all cells."""


class MemorySource:
    """Training data in memory, in blocks of cells (one block unless the caller sets bounds)."""

    def __init__(self, values: sparse.csr_matrix, counts: sparse.csr_matrix | None, bounds: list[slice]) -> None:
        self.values, self.counts, self.bounds = values, counts, bounds

    def load(self, blocks: list[int]) -> Buffer:
        """Return the cells of ``blocks`` (indices into ``bounds``), in that order."""
        if len(self.bounds) == 1:
            return Buffer(self.values, self.counts, np.arange(self.values.shape[0]))
        rows = np.concatenate([np.arange(self.bounds[b].start, self.bounds[b].stop) for b in blocks])
        return Buffer(self.values[rows], None if self.counts is None else self.counts[rows], rows)


def block_bounds(n_cells: int, block_cells: int | None) -> list[slice]:
    """Blocks of ``block_cells`` cells (one block of all cells for None)."""
    step = n_cells if block_cells is None else block_cells
    return [slice(a, min(a + step, n_cells)) for a in range(0, n_cells, max(1, step))]


def buffers(order: np.ndarray, bounds: list[slice], buffer_cells: int) -> list[list[int]]:
    """Group blocks, in ``order``, into buffers of at least ``buffer_cells`` cells (the last may hold fewer)."""
    groups: list[list[int]] = [[]]
    size = 0
    for b in order:
        if size >= buffer_cells:
            groups.append([])
            size = 0
        groups[-1].append(int(b))
        size += bounds[b].stop - bounds[b].start
    return groups


def log_rates(out: torch.Tensor, library: torch.Tensor) -> torch.Tensor:
    """``log μ`` of the decoder's rates ``μ = library · softmax(out)`` (an empty cell's stay finite)."""
    return torch.log_softmax(out, dim=1) + torch.log(library.clamp(min=1e-8))[:, None]


def negative_log_likelihood(
    counts: torch.Tensor, log_mu: torch.Tensor, likelihood: str, log_theta: torch.Tensor | None = None
) -> torch.Tensor:
    """Return the negative log-likelihood of each entry under Poisson(μ) or NB(μ, θ) (θ per gene).

    Both leave out ``lgamma(x + 1)``, which depends on neither μ nor θ.
    """
    if likelihood == "poisson":
        return torch.exp(log_mu) - counts * log_mu
    # NB: -[lgamma(x+θ) - lgamma(θ) + θ log(θ/(θ+μ)) + x log(μ/(θ+μ))], in logs for stability
    theta = torch.exp(log_theta)[None, :]
    log_total = torch.logaddexp(log_theta[None, :], log_mu)
    return (
        torch.lgamma(theta)
        - torch.lgamma(counts + theta)
        - theta * (log_theta[None, :] - log_total)
        - counts * (log_mu - log_total)
    )


def train_epoch(
    module: AutoencoderModule,
    source: MemorySource | Any,
    optimizer: torch.optim.Optimizer,
    *,
    batch_size: int,
    buffer_cells: int,
    rng: np.random.Generator,
    device: torch.device,
    masker: Masker | None = None,
    likelihood: str = "normal",
    autocast: bool = True,
) -> float:
    """One pass over the cells in a random order; returns the mean training loss per entry.

    The order is drawn block by block, so that data read from disk or dask in blocks of
    cells is read once per epoch: the blocks in a random order, grouped into buffers of at
    least ``buffer_cells`` cells, each buffer's cells in a random order, cut into
    minibatches. With one block this is a random order of all cells. The same blocks and
    seed give the same minibatches whatever holds the data (``source.load(blocks)``).

    The loss is the MSE against the input itself, or with a count ``likelihood`` the
    negative log-likelihood of the counts under the decoder's rates (the cell's total
    count times the decoder's softmax). With a ``masker`` (Noise2Self), each cell of a
    minibatch has one random gene group hidden in its input, and the loss is taken on
    the hidden entries only.
    """
    module.train()
    n_blocks = len(source.bounds)
    order = rng.permutation(n_blocks) if n_blocks > 1 else np.zeros(1, dtype=np.int64)
    total = torch.zeros((), dtype=torch.float64, device=device)  # summed on the device: no wait per step
    seen = 0
    for blocks in buffers(order, source.bounds, buffer_cells):
        buffer = source.load(blocks)
        values_of = rows_on(buffer.values, device)
        counts_of = None if likelihood == "normal" else rows_on(buffer.counts, device)
        shuffled = rng.permutation(buffer.values.shape[0])
        for start in range(0, shuffled.size, batch_size):
            local = np.sort(shuffled[start : start + batch_size])  # sorted rows slice CSR faster
            batch = values_of(local)
            inputs, hidden = (batch, None) if masker is None else masker.hide_random(buffer.rows[local], batch, rng)
            with _autocast(device, autocast):
                out = module(inputs)
            if counts_of is None:
                per_entry = (out.float() - batch) ** 2
            else:
                counts = counts_of(local)
                log_mu = log_rates(out.float(), counts.sum(dim=1))
                per_entry = negative_log_likelihood(counts, log_mu, likelihood, getattr(module, "log_theta", None))
            loss = (
                torch.mean(per_entry) if hidden is None else torch.sum(per_entry * hidden) / hidden.sum().clamp(min=1.0)
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach().double() * local.size
            seen += local.size
    return float(total) / seen


@torch.no_grad()
def infer(
    module: AutoencoderModule,
    X: sparse.csr_matrix,
    rows: slice,
    *,
    batch_size: int,
    device: torch.device,
    cache: dict[int, np.ndarray] | None = None,
    masker: Masker | None = None,
    bounds: list[slice] | None = None,
    autocast: bool = True,
    output: DeviceExpected | None = None,
) -> np.ndarray:
    """Reconstruction of cells ``rows`` (float32), computed batch by batch.

    Batches sit at fixed positions — every ``batch_size`` cells from the start of each
    block of ``bounds`` (one block by default) — whatever ``rows`` is, so a cell's output
    does not depend on how the caller asks for cells, and data held in blocks elsewhere
    (dask, disk) gives the same bytes block by block. ``cache`` keeps the last batch
    computed, for a caller that asks for consecutive blocks. With a ``masker``, each gene
    group is predicted from the input with that group hidden. With ``output``, a count
    decoder's logits are mapped to its output on the device before the copy back.
    """
    module.eval()
    start, stop, _ = rows.indices(X.shape[0])
    out = np.empty((stop - start, X.shape[1]), dtype=np.float32)
    edges = batch_edges(X.shape[0], batch_size, bounds)
    first = int(np.searchsorted(edges, start, side="right")) - 1
    for b in range(first, len(edges) - 1):
        lo, hi = int(edges[b]), int(edges[b + 1])
        if lo >= stop:
            break
        if cache is not None and b in cache:
            block = cache[b]
        else:
            block = _forward(module, X, lo, hi, device, masker, autocast, output)
            if cache is not None:
                cache.clear()
                cache[b] = block
        a, z = max(lo, start), min(hi, stop)
        out[a - start : z - start] = block[a - lo : z - lo]
    return out


def batch_edges(n_cells: int, batch_size: int, bounds: list[slice] | None) -> np.ndarray:
    """Start of every inference batch (and the end): each block cut every ``batch_size`` cells."""
    bounds = [slice(0, n_cells)] if bounds is None else bounds
    starts = [np.arange(b.start, b.stop, batch_size) for b in bounds if b.stop > b.start]
    return np.r_[np.concatenate(starts) if starts else np.zeros(0, dtype=np.int64), n_cells].astype(np.int64)


def _forward(
    module: AutoencoderModule,
    X: sparse.csr_matrix,
    lo: int,
    hi: int,
    device: torch.device,
    masker: Masker | None,
    autocast: bool = True,
    output: DeviceExpected | None = None,
) -> np.ndarray:
    """Return the network's output for cells ``lo:hi``; J-invariant (a pass per gene group) with a ``masker``."""
    batch = to_device(X, slice(lo, hi), device)
    if masker is None:
        with _autocast(device, autocast):
            out = module(batch).float()
        return (out if output is None else output(out, lo, hi)).cpu().numpy()  # the output step in float64
    with _autocast(device, autocast):
        stand_in = masker.stand_in(np.arange(lo, hi), batch)
        out = np.empty(batch.shape, dtype=np.float32)
        for g, columns in enumerate(masker.columns):
            out[:, columns] = module(masker.hide_group(g, batch, stand_in))[:, columns].float().cpu().numpy()
        return out
