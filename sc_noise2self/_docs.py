"""Parameter descriptions that several public functions share: one text, in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable

F = TypeVar("F", bound="Callable")

FRAGMENTS = {
    "calibration": """    calibration
        ``"mcv"`` (molecular cross-validation: each cell's molecules are split at random, the
        setting is fitted on one part and scored on the other; needs raw counts) or ``"genes"``
        (Noise2Self: each random group of genes is predicted without being seen and scored
        against the data itself; any values, with ``transform="none"`` for values that are not
        counts).
    split_fraction
        MCV: expected share of each cell's molecules used for fitting.
    n_splits
        MCV: independent random splits; the choice minimises their mean loss. None: 3 when
        the held-out part is shallow — a median below 50 molecules per cell, e.g. fewer than
        500 counts at ``split_fraction=0.9``, where one split's choice moves from split to
        split — or with ``select="1se"``; otherwise 1.
    max_scored_cells
        MCV: score the sweep on at most this many cells in all, shared among the splits (each
        split's share a seeded sample of whole groups of 256 neighbouring cells, the same in
        every split), while every cell is fitted on. Scoring costs about as much per cell as
        fitting, so on large data the sample keeps its cost constant; ``difference_se_cells``
        and ``within_1se`` include the sample's uncertainty (``difference_se`` is the spread
        across splits only). Recorded in ``params`` as ``scored_cells`` (per split). None:
        every cell in every split.
    sampling
        MCV: how the counts were sampled, which decides how each cell's counts are split.
        ``"poisson"`` (UMI counts, molecules sampled independently): binomial thinning.
        ``"negative_binomial"`` (read counts without UMIs, each molecule amplified into
        several reads): each entry is thinned beta-binomially, so that counts whose variance
        is ``dispersion`` times their mean split into uncorrelated halves.
    dispersion
        ``sampling="negative_binomial"``: the counts' variance over their mean given the
        cell, ``φ`` (1 for molecules); None estimates it from the data (the check recorded as
        ``sampling_dispersion``).
    depth
        MCV, ``loss="mse"``: the sequencing depth the held-out error is measured at.
        ``"output"``: the full data's, where the output is written — each held-out value is
        carried there to first order around the entry's expected count from a smooth fit,
        which weighs lowly expressed genes as the output's own error does. ``"held_out"``: the held-out part's own (the
        prediction converted exactly to it), which leans to less denoising. None (default):
        ``"output"``, or ``"held_out"`` where the output's is undefined (``loss="poisson"``,
        or data too small for the smooth fit). The choice is recorded in ``params``.
    n_groups
        Noise2Self: number of random gene groups.
    transform
        Applied to the (depth-normalised) counts before denoising: ``"log1p"`` (the default,
        with ``target_sum=1e4``: scanpy's log-normalised scale, as ``sc.pp.normalize_total`` +
        ``sc.pp.log1p``), ``"sqrt"`` (with ``target_sum=None``: the variance-stabilising scale of
        raw counts that molecular cross-validation was introduced with) or ``"none"``.
    target_sum
        Scale each cell to this many counts before the transform (as ``sc.pp.normalize_total``);
        None keeps each cell's own depth.
""",
    "select": """    select
        ``"min"``: the value with the lowest mean loss. ``"1se"``: the simplest value (fewest
        components, shortest diffusion time, fewest neighbours, narrowest bottleneck) whose mean
        loss is within one standard error of the minimum, the error of the difference estimated
        across splits (MCV, needs ``n_splits >= 2``) or gene groups.
""",
    "progress": """    progress
        Show a progress bar (a widget in Jupyter). None (default): shown unless scanpy's
        verbosity is ``"error"``, drawn once the call has run for a second; ``True``: drawn from
        the first step; ``False``: hidden.
""",
}


def shared_docs(func: F) -> F:
    """Put each ``    {name}`` line of ``func``'s docstring in place of :data:`FRAGMENTS` ``[name]``."""
    for name, text in FRAGMENTS.items():
        if func.__doc__ is not None:  # None under python -OO
            func.__doc__ = func.__doc__.replace(f"    {{{name}}}\n", text)
    return func
