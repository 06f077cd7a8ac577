"""The Denoiser protocol: the one seam every method plugs into.

The calibration engine knows nothing of a method, and a method knows nothing of AnnData.

A denoiser is fitted once on the normalised training half (cells × genes, CSR or dense)
with the whole grid it will be asked about, so it can prepare the work for all values
at once (one SVD at the largest rank, one graph for all diffusion times, …).
``sweep(rows)`` then yields the predictions for a block of cells at every grid value
in order, each step reusing the previous one, so the whole grid costs about one fit
at its largest value and never more than a block × genes array at a time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Self

    import numpy as np

    from .._types import ArrayLike

__all__ = ["Denoiser"]


@runtime_checkable
class Denoiser(Protocol):
    """What :func:`sc_noise2self.tl.calibrate` needs from a method.

    Follow scikit-learn's estimator rules: no logic in ``__init__``, fitted attributes
    end in ``_``, ``fit`` returns ``self``, ``random_state`` is stored as given.
    """

    grid_name: str
    """What the grid values mean, e.g. ``"n_comps"``; used in plots and ``uns``."""

    def default_grid(self, shape: tuple[int, int]) -> np.ndarray:
        """Return the grid used when the caller gives none, for data of this shape."""

    def max_grid_value(self, shape: tuple[int, int]) -> int:
        """Largest admissible grid value for data of this shape."""

    def fit(self, X: ArrayLike, grid: np.ndarray) -> Self:
        """Fit on the normalised training data, preparing every value of ``grid``."""

    def sweep(self, rows: slice) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(value, prediction)`` for cells ``rows`` at each grid value, in order.

        The prediction array may be updated in place by the next step: read it before
        advancing the iterator.
        """

    def predict(self, rows: slice, value: int) -> np.ndarray:
        """Denoised values for cells ``rows`` at one grid value."""
