"""Training and inference loops of the autoencoder: minibatches sliced from CSR, densified per batch."""

from __future__ import annotations

from contextlib import nullcontext
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch

if TYPE_CHECKING:
    from scipy import sparse

    from ._ae_mask import Masker
    from ._ae_module import AutoencoderModule

__all__ = ["CountTargets", "infer", "negative_log_likelihood", "resolve_device", "to_device", "train_epoch"]


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


def to_device(X: sparse.csr_matrix, rows: np.ndarray | slice, device: torch.device) -> torch.Tensor:
    """Dense float32 batch of ``rows`` on ``device``; pinned, asynchronous copy on CUDA."""
    batch = torch.from_numpy(np.asarray(X[rows].toarray(), dtype=np.float32))
    if device.type == "cuda":
        return batch.pin_memory().to(device, non_blocking=True)
    return batch


def _autocast(device: torch.device) -> torch.autocast | nullcontext:
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


class CountTargets(NamedTuple):
    """What a count likelihood trains against: the raw counts and each cell's library size."""

    likelihood: str
    counts: sparse.csr_matrix
    library: np.ndarray
    """Each cell's total count (float64); the decoder's rates are ``library · softmax(output)``."""


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
    X: sparse.csr_matrix,
    optimizer: torch.optim.Optimizer,
    *,
    batch_size: int,
    rng: np.random.Generator,
    device: torch.device,
    masker: Masker | None = None,
    targets: CountTargets | None = None,
) -> float:
    """One pass over the cells in a random order; returns the mean training loss per entry.

    The loss is the MSE against the input itself, or with ``targets`` the negative
    log-likelihood of the counts under the decoder's rates. With a ``masker``
    (Noise2Self), each cell of a minibatch has one random gene group hidden in its
    input, and the loss is taken on the hidden entries only.
    """
    module.train()
    order = rng.permutation(X.shape[0])
    total, seen = 0.0, 0
    for start in range(0, order.size, batch_size):
        rows = np.sort(order[start : start + batch_size])  # sorted rows slice CSR faster
        batch = to_device(X, rows, device)
        inputs, hidden = (batch, None) if masker is None else masker.hide_random(X, rows, batch, rng)
        with _autocast(device):
            out = module(inputs)
        if targets is None:
            per_entry = (out.float() - batch) ** 2
        else:
            library = torch.from_numpy(targets.library[rows].astype(np.float32)).to(device)
            log_mu = log_rates(out.float(), library)
            per_entry = negative_log_likelihood(
                to_device(targets.counts, rows, device), log_mu, targets.likelihood, getattr(module, "log_theta", None)
            )
        loss = torch.mean(per_entry) if hidden is None else torch.sum(per_entry * hidden) / hidden.sum().clamp(min=1.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * rows.size
        seen += rows.size
    return total / seen


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
) -> np.ndarray:
    """Reconstruction of cells ``rows`` (float32), computed batch by batch.

    Batches sit at fixed positions (cells ``i * batch_size`` onwards), whatever ``rows``
    is, so a cell's output does not depend on how the caller blocks the cells. ``cache``
    keeps the last batch computed, for a caller that asks for consecutive blocks. With a
    ``masker``, each gene group is predicted from the input with that group hidden.
    """
    module.eval()
    start, stop, _ = rows.indices(X.shape[0])
    out = np.empty((stop - start, X.shape[1]), dtype=np.float32)
    for b in range(start // batch_size, -(-stop // batch_size)):
        lo, hi = b * batch_size, min((b + 1) * batch_size, X.shape[0])
        if cache is not None and b in cache:
            block = cache[b]
        else:
            block = _forward(module, X, lo, hi, device, masker)
            if cache is not None:
                cache.clear()
                cache[b] = block
        a, z = max(lo, start), min(hi, stop)
        out[a - start : z - start] = block[a - lo : z - lo]
    return out


def _forward(
    module: AutoencoderModule, X: sparse.csr_matrix, lo: int, hi: int, device: torch.device, masker: Masker | None
) -> np.ndarray:
    """Return the network's output for cells ``lo:hi``; J-invariant (a pass per gene group) with a ``masker``."""
    batch = to_device(X, slice(lo, hi), device)
    with _autocast(device):
        if masker is None:
            return module(batch).float().cpu().numpy()
        stand_in = masker.stand_in(X, np.arange(lo, hi), batch)
        out = np.empty(batch.shape, dtype=np.float32)
        for g, columns in enumerate(masker.columns):
            out[:, columns] = module(masker.hide_group(g, batch, stand_in))[:, columns].float().cpu().numpy()
        return out
