"""The calibration's heaviest numerics on a torch device (CUDA): Gram matrices, eigenproblems, scoring.

PCA and diffusion run these when a CUDA device is there (``device="auto"``, chosen as the
autoencoder chooses its device), in place of the compiled CPU kernels of :mod:`.linalg`,
:mod:`.rows` and :mod:`.loss`. Each takes and returns NumPy arrays; a block's stored entries are
copied to the device and made dense there. The arithmetic is the CPU's — Gram matrices and
eigenproblems in float64, predictions built in float32 and converted to the held-out depth in
float64 — but sums run in the device's order, so losses agree with the CPU's to rounding
(about 1e-7 relative), not to the byte. torch (the ``autoencoder`` extra) is imported on first
use, and only where a CUDA driver is present or a device is asked for.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import sparse

from .linalg import GramStats, fix_signs

if TYPE_CHECKING:
    from collections.abc import Iterator

    from .._types import ArrayLike
    from .loss import RowScorer

__all__ = [
    "centred_scores",
    "check_device",
    "covariance_svd",
    "diffuse",
    "gram_stats",
    "gram_times",
    "neighbour_candidates",
    "rank_sweep_losses",
    "resolve",
    "stacked_losses",
]

_DENSE_ELEMENTS = 2**25  # cells × genes made dense on the device at once (256 MiB of float64)


def check_device(device: object) -> str:
    """Return ``device`` if it names one: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    A CUDA device asked for by name is looked for now, before any work: an ``ImportError``
    without torch, a ``ValueError`` where torch sees no CUDA device.
    """
    _check_name(device)
    if device.startswith("cuda"):
        resolve(device)
    return device


def _check_name(device: object) -> None:
    if not isinstance(device, str) or not (device in ("auto", "cpu", "cuda") or device.startswith("cuda:")):
        msg = f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}."
        raise ValueError(msg)


def _cuda_driver() -> bool:
    """Whether a CUDA device may be there, without importing torch where it cannot (no driver, macOS)."""
    if importlib.util.find_spec("torch") is None or sys.platform == "darwin":
        return False
    return os.path.exists("/proc/driver/nvidia/version") if sys.platform.startswith("linux") else True


def resolve(device: str) -> Any:
    """Return the torch device to compute on, or None for the CPU's compiled kernels.

    ``"auto"``: CUDA when torch sees a CUDA device, else the CPU; ``"cpu"``: the CPU;
    ``"cuda"``/``"cuda:N"``: that device (an ``ImportError`` without torch, a ``ValueError``
    where torch sees no CUDA device).
    """
    _check_name(device)
    if device == "cpu" or (device == "auto" and not _cuda_driver()):
        return None
    try:
        import torch
    except ImportError as error:
        msg = (
            f"device={device!r} computes with torch, which is not installed: install a CUDA build of torch "
            "(https://pytorch.org/get-started/locally/), or use device='cpu'."
        )
        raise ImportError(msg) from error
    if not torch.cuda.is_available():
        if device == "auto":
            return None
        msg = f"device={device!r} was asked for, but torch sees no CUDA device; use device='auto' or 'cpu'."
        raise ValueError(msg)
    return torch.device("cuda" if device == "auto" else device)


def _dense(values: ArrayLike, device: Any, rows: slice = slice(None)) -> Any:
    """Rows of ``values`` (CSR or dense) as a dense float64 tensor on ``device``, made dense there."""
    import torch

    part = values[rows]
    if not sparse.issparse(part):
        return torch.as_tensor(np.asarray(part, dtype=np.float64), device=device)
    part = sparse.csr_matrix(part)  # canonical: each entry written once
    dense = torch.zeros(part.shape, dtype=torch.float64, device=device)
    lengths = torch.as_tensor(np.diff(part.indptr).astype(np.int64), device=device)
    rows_of = torch.repeat_interleave(torch.arange(part.shape[0], device=device), lengths)
    columns = torch.as_tensor(part.indices.astype(np.int64), device=device)
    dense[rows_of, columns] = torch.as_tensor(part.data.astype(np.float64), device=device)
    return dense


def _row_steps(values: ArrayLike) -> list[slice]:
    """Blocks of rows small enough to make dense on the device."""
    step = max(1, _DENSE_ELEMENTS // max(1, values.shape[1]))
    return [slice(i, min(i + step, values.shape[0])) for i in range(0, values.shape[0], step)]


def gram_stats(values: ArrayLike, device: Any) -> GramStats:
    """:func:`~sc_noise2self._numerics.linalg.gram_stats` on ``device``: rows' count, mean and centred Gram matrix."""
    import torch

    if values.shape[0] == 0:  # a block whose cells were all left out
        return GramStats(0, np.zeros(values.shape[1]), np.zeros((values.shape[1], values.shape[1])))
    n, mean, m2 = 0, None, None
    for rows in _row_steps(values):
        block = _dense(values, device, rows)
        n_b, mean_b = block.shape[0], block.mean(dim=0)
        block = block - mean_b  # not in place: on the CPU the tensor may share the caller's array
        m2_b = block.T @ block
        if mean is None:
            n, mean, m2 = n_b, mean_b, m2_b
            continue
        total = n + n_b  # Chan, Golub & LeVeque's merge, as merge_gram_stats
        delta = mean_b - mean
        mean = mean + delta * (n_b / total)
        m2 = m2 + m2_b + torch.outer(delta, delta) * (n * n_b / total)
        n = total
    return GramStats(n, mean.cpu().numpy(), m2.cpu().numpy())


def covariance_svd(stats: GramStats, n_comps: int, device: Any) -> tuple[np.ndarray, np.ndarray]:
    """:func:`~sc_noise2self._numerics.linalg.covariance_svd` on ``device``: top singular values and components."""
    import torch

    values, vectors = torch.linalg.eigh(torch.as_tensor(stats.m2, device=device))
    s = np.sqrt(np.clip(values.flip(0)[:n_comps].cpu().numpy(), 0.0, None))
    vt = vectors.flip(1)[:, :n_comps].T.cpu().numpy()
    return s, vt * fix_signs(vt)[:, None]


def gram_times(values: ArrayLike, q: np.ndarray, device: Any) -> tuple[np.ndarray, np.ndarray]:
    """Column sums of ``values`` and ``valuesᵀ (values q)`` on ``device`` (a pass of the randomised Gram iteration)."""
    import torch

    basis = torch.as_tensor(q, dtype=torch.float64, device=device)
    sums = torch.zeros(values.shape[1], dtype=torch.float64, device=device)
    product = torch.zeros((values.shape[1], q.shape[1]), dtype=torch.float64, device=device)
    for rows in _row_steps(values):
        block = _dense(values, device, rows)
        sums = sums + block.sum(dim=0)
        product = product + block.T @ (block @ basis)
    return sums.cpu().numpy(), product.cpu().numpy()


def centred_scores(values: ArrayLike, mean: np.ndarray, components: np.ndarray, device: Any) -> np.ndarray:
    """:func:`~sc_noise2self._numerics.linalg.centred_scores` on ``device``: ``(values - mean) @ components.T``."""
    import torch

    loadings = torch.as_tensor(np.ascontiguousarray(components.T), dtype=torch.float64, device=device)
    shift = torch.as_tensor(mean, dtype=torch.float64, device=device) @ loadings
    parts = [(_dense(values, device, rows) @ loadings - shift).cpu().numpy() for rows in _row_steps(values)]
    return np.concatenate(parts) if parts else np.zeros((0, components.shape[0]))


class _Scorer:
    """A :class:`~sc_noise2self._numerics.loss.RowScorer` on the device: converts predictions and scores them."""

    def __init__(self, scorer: RowScorer, device: Any) -> None:
        import torch

        target, flat, n, rows, weights, inv_step = scorer
        self.target = torch.as_tensor(np.asarray(target, dtype=np.float64), device=device)
        self.flat = torch.as_tensor(np.asarray(flat, dtype=np.float64), device=device)
        self.n, self.inv_step = int(n), float(inv_step)
        last_row = self.flat.numel() // self.n - 1
        rows = torch.as_tensor(np.asarray(rows, dtype=np.int64), device=device)
        self.base = (rows * self.n)[:, None]
        self.next_base = (torch.clamp(rows + 1, max=last_row) * self.n)[:, None]  # read where the weight is > 0
        self.weights = torch.as_tensor(np.asarray(weights, dtype=np.float64), device=device)[:, None]
        self.interpolate = bool((self.weights > 0).any())

    def _lookup(self, base: Any, j: Any, frac: Any) -> Any:
        lo = self.flat[base + j]
        return lo + frac * (self.flat[base + j + 1] - lo)

    def errors(self, pred: Any) -> Any:
        """Per-cell summed squared error of the converted predictions (NaN where one is not finite)."""
        import torch

        pred = pred.to(torch.float64)
        finite = torch.isfinite(pred)
        pos = torch.clamp(torch.where(finite, pred, 0.0) * self.inv_step, min=0.0)
        j = torch.clamp(pos.floor(), max=self.n - 2)  # as the CPU: int(min(pos, last - 1))
        frac, j = pos - j, j.to(torch.int64)
        out = self._lookup(self.base, j, frac)
        if self.interpolate:
            out = out + self.weights * (self._lookup(self.next_base, j, frac) - out)
        out = torch.where(finite, out, torch.nan) - self.target
        return (out * out).sum(dim=1)


def rank_sweep_losses(
    offset: np.ndarray, coefs: np.ndarray, components: np.ndarray, ranks: np.ndarray, scorer: RowScorer, device: Any
) -> np.ndarray:
    """PCA's rank sweep on ``device``: per-cell MSE of ``offset + coefs[:, :k] @ components[:k]`` for each rank ``k``.

    The prediction grows by the next components' terms from one rank to the next (float32), as
    the CPU's kernel does; cells × ranks.
    """
    import torch

    score = _Scorer(scorer, device)
    coefs_t = torch.as_tensor(np.asarray(coefs, dtype=np.float32), device=device)
    loadings = torch.as_tensor(np.asarray(components, dtype=np.float32), device=device)
    pred = torch.as_tensor(np.asarray(offset, dtype=np.float32), device=device).expand(coefs_t.shape[0], -1).clone()
    out, done = [], 0
    for k in np.asarray(ranks, dtype=np.int64).tolist():
        if k > done:
            pred += coefs_t[:, done:k] @ loadings[done:k]
        done = k
        out.append(score.errors(pred))
    return torch.stack(out, dim=1).cpu().numpy()


def stacked_losses(
    offset: np.ndarray, stacked: np.ndarray, components: np.ndarray, scorer: RowScorer, device: Any
) -> np.ndarray:
    """Diffusion's sweep on ``device``: per-cell MSE of ``offset + stacked[v] @ components`` for each value ``v``."""
    import torch

    score = _Scorer(scorer, device)
    loadings = torch.as_tensor(np.asarray(components, dtype=np.float32), device=device)
    shift = torch.as_tensor(np.asarray(offset, dtype=np.float32), device=device)
    out = [score.errors(shift + torch.as_tensor(z, dtype=torch.float32, device=device) @ loadings) for z in stacked]
    return torch.stack(out, dim=1).cpu().numpy() if out else np.zeros((stacked.shape[1], 0))


def neighbour_candidates(points: np.ndarray, half_norms: np.ndarray, n_candidates: int, device: Any) -> np.ndarray:
    """Each cell's ``n_candidates`` nearest other cells by float32 distances on ``device`` (brute force, in tiles).

    The screening of :func:`~sc_noise2self.denoisers._search.exact_neighbours`, which reranks the
    candidates exactly in float64 on the CPU: a cell ranks others by ``|x_j|² / 2 - q · x_j``.
    """
    import torch

    n = points.shape[0]
    single = torch.as_tensor(np.ascontiguousarray(points, dtype=np.float32), device=device)
    half = torch.as_tensor(np.asarray(half_norms, dtype=np.float32), device=device)
    out = np.empty((n, n_candidates), np.int64)
    tile = max(1, 2**26 // n)  # a tile × cells float32 block of 256 MiB
    for start in range(0, n, tile):
        stop = min(start + tile, n)
        values = half[None, :] - single[start:stop] @ single.T
        values[torch.arange(stop - start, device=device), torch.arange(start, stop, device=device)] = torch.inf
        out[start:stop] = torch.topk(values, n_candidates, dim=1, largest=False).indices.cpu().numpy()
    return out


def diffuse(walk: sparse.csr_matrix, scores: np.ndarray, times: list[int], device: Any) -> Iterator[np.ndarray]:
    """Yield ``walk^t @ scores`` for each ``t`` of ``times`` (increasing), stepping on ``device`` (float64)."""
    import torch

    walk = sparse.csr_matrix(walk)
    with warnings.catch_warnings():  # torch marks its sparse CSR tensors as beta
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)
        operator = torch.sparse_csr_tensor(
            torch.as_tensor(walk.indptr.astype(np.int64), device=device),
            torch.as_tensor(walk.indices.astype(np.int64), device=device),
            torch.as_tensor(walk.data.astype(np.float64), device=device),
            size=walk.shape,
            check_invariants=False,  # scipy's canonical CSR
        )
    z, done = torch.as_tensor(np.asarray(scores, dtype=np.float64), device=device), 0
    for t in times:
        for _ in range(int(t) - done):
            z = operator @ z
        done = int(t)
        yield z.cpu().numpy()
