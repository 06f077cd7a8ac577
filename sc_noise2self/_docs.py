"""Parameter descriptions that several public functions share: one text, in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable

F = TypeVar("F", bound="Callable")

FRAGMENTS = {
    "mcv_sampling": """    n_splits
        MCV: independent random splits; the choice minimises their mean loss. None: 3 when
        the held-out part is shallow — a median below 50 molecules per cell, e.g. fewer than
        500 counts at ``split_fraction=0.9``, where one split's choice moves from split to
        split — or with ``select="1se"``; otherwise 1 (``benchmarks/n_splits.py``).
    sampling
        MCV: how the counts were sampled, which decides how each cell's counts are split.
        ``"poisson"`` (UMI counts, molecules sampled independently): binomial thinning.
        ``"negative_binomial"`` (read counts without UMIs, each molecule amplified into
        several reads): each entry is thinned beta-binomially, so that counts whose variance
        is ``dispersion`` times their mean split into uncorrelated halves (README, "Read counts").
    dispersion
        ``sampling="negative_binomial"``: the counts' variance over their mean given the
        cell, ``φ`` (1 for molecules); None estimates it from the data (the check recorded as
        ``sampling_dispersion``).
    depth
        MCV, ``loss="mse"``: the sequencing depth the held-out error is measured at.
        ``"output"``: the full data's, where the output is written — each held-out value is
        carried there to first order around the entry's expected count from a smooth fit,
        which weighs lowly expressed genes as the output's own error does (README, "The
        error at the output's depth"). ``"held_out"``: the held-out part's own (the
        prediction converted exactly to it), which leans to less denoising. None (default):
        ``"output"``, or ``"held_out"`` where the output's is undefined (``loss="poisson"``,
        or data too small for the smooth fit). The choice is recorded in ``params``.
""",
}


def shared_docs(func: F) -> F:
    """Put each ``    {name}`` line of ``func``'s docstring in place of :data:`FRAGMENTS` ``[name]``."""
    for name, text in FRAGMENTS.items():
        if func.__doc__ is not None:  # None under python -OO
            func.__doc__ = func.__doc__.replace(f"    {{{name}}}\n", text)
    return func
