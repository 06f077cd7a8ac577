"""Noise2Self masking for the autoencoder: hide a group of genes in the input, predict it from the rest.

A :class:`Masker` holds a fixed partition of the genes and what stands in for a hidden
group. Training hides one random group per cell of each minibatch and takes the loss on
the hidden entries only; inference predicts every group from an input where that group
is hidden, so a cell's prediction for a gene never reads that cell's value of the gene
(J-invariance, Batson & Royer 2019).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from scipy import sparse

__all__ = ["Masker"]


class Masker:
    """A partition of the genes and the values that stand in for a hidden group.

    Parameters
    ----------
    groups
        Group index of every gene, ``0..n_groups-1``.
    fill
        What replaces hidden values: ``"zero"``, ``"mean"`` (the gene's mean over cells) or
        ``"donor"`` (the value of another cell).
    X
        The data the network trains on (cells × genes, CSR): the gene means, and the donors' values.
    seed
        Seed of the donor cells (``fill="donor"``): a fixed permutation of the cells
        without fixed points, so that the stand-ins do not depend on minibatches or blocks.
    """

    def __init__(self, groups: np.ndarray, fill: str, X: sparse.csr_matrix, seed: int) -> None:
        self.groups = np.asarray(groups, dtype=np.int64)
        self.n_groups = int(self.groups.max()) + 1
        self.fill = fill
        self.columns = [np.flatnonzero(self.groups == g) for g in range(self.n_groups)]
        self._groups = torch.from_numpy(self.groups)
        self.X = X
        self.means = torch.from_numpy(np.asarray(X.mean(axis=0), dtype=np.float32).ravel())
        n_cells = X.shape[0]
        shift = np.random.default_rng(seed).permutation(n_cells)
        # cell shift[i] takes the values of cell shift[i + 1]: a single cycle, so nobody is their own donor
        self.donors = np.empty(n_cells, dtype=np.int64)
        self.donors[shift] = np.roll(shift, -1)

    def _groups_on(self, device: torch.device) -> torch.Tensor:
        """Every gene's group, as a tensor on ``device`` (copied once per device)."""
        if self._groups.device != device:
            self._groups = self._groups.to(device)
        return self._groups

    def stand_in(self, rows: np.ndarray, batch: torch.Tensor) -> torch.Tensor:
        """Values that replace hidden entries of the cells ``rows`` (a dense batch like ``batch``)."""
        if self.fill == "zero":
            return torch.zeros_like(batch)
        if self.fill == "mean":
            return self.means.to(batch.device).expand_as(batch)
        donors = torch.from_numpy(np.asarray(self.X[self.donors[rows]].toarray(), dtype=np.float32))
        return donors.to(batch.device)

    def hide_random(
        self, rows: np.ndarray, batch: torch.Tensor, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Hide one random group per cell; return the input and the mask of hidden entries (1.0 where hidden)."""
        chosen = torch.from_numpy(rng.integers(self.n_groups, size=rows.size)).to(batch.device)
        hidden = self._groups_on(batch.device)[None, :] == chosen[:, None]
        return torch.where(hidden, self.stand_in(rows, batch), batch), hidden.to(batch.dtype)

    def hide_group(self, g: int, batch: torch.Tensor, stand_in: torch.Tensor) -> torch.Tensor:
        """Return the input with group ``g`` hidden in every cell."""
        out = batch.clone()
        columns = torch.from_numpy(self.columns[g]).to(batch.device)
        out[:, columns] = stand_in[:, columns]
        return out
