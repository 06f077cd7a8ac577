"""Run kNN-smoothing (Wagner, Yan & Yanai 2018) on counts, in its own virtual environment.

    benchmarks/venvs/knn_smoothing/bin/python _knn_smoothing_runner.py IN.npz OUT.npy K

``knn_smooth.py`` comes from github.com/yanailab/knn-smoothing (version 2.1) and is copied
into ``benchmarks/venvs/knn_smoothing/`` (git-ignored), see benchmarks/README.md. Writes the
smoothed counts (cells × genes) and prints the seconds spent inside ``knn_smoothing``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from scipy import sparse

sys.path.insert(0, str(Path(sys.executable).parents[1]))  # the venv folder holds knn_smooth.py
from knn_smooth import knn_smoothing


def main() -> None:
    source, target, k = sys.argv[1], sys.argv[2], int(sys.argv[3])
    X = sparse.load_npz(source).toarray().astype(np.float64)
    start = time.perf_counter()
    smoothed = knn_smoothing(X.T, k, d=10, dither=0.03, seed=0).T  # genes x cells in, as the script wants
    elapsed = time.perf_counter() - start
    np.save(target, smoothed)
    print(f"{elapsed:.3f}")


if __name__ == "__main__":
    main()
