"""Run MAGIC (magic-impute) on a matrix, in MAGIC's own virtual environment.

Called by ``diffusion_vs_magic.py`` as a subprocess:
``benchmarks/venvs/magic/bin/python benchmarks/_magic_runner.py IN.npz OUT.npy T``
where IN is a sparse matrix (scipy ``save_npz``) already transformed the way the caller
wants, T is an integer or ``auto``. Writes the dense MAGIC output and prints the seconds
spent inside MAGIC and the t it used.
"""

from __future__ import annotations

import re
import sys
import time

import magic
import numpy as np
from scipy import sparse


def main() -> None:
    source, target, t = sys.argv[1], sys.argv[2], sys.argv[3]
    X = sparse.load_npz(source).tocsr()
    op = magic.MAGIC(t=t if t == "auto" else int(t), random_state=0, verbose=0, n_jobs=2)
    chosen = [t]
    logger = sys.modules["magic.magic"]._logger
    log_info = logger.info  # MAGIC logs the t it picks but does not store it

    def record(msg: str, *args: object, **kwargs: object) -> object:
        match = re.match(r"Automatically selected t = (\d+)", str(msg))
        if match:
            chosen[0] = match.group(1)
        return log_info(msg, *args, **kwargs)

    logger.info = record
    start = time.perf_counter()
    out = op.fit_transform(X)
    elapsed = time.perf_counter() - start
    np.save(target, np.asarray(out, dtype=np.float64))
    print(f"{elapsed:.3f} {chosen[0]}")


if __name__ == "__main__":
    main()
