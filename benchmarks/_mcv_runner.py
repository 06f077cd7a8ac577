"""Run the MCV paper's own PCA rank sweep, in its own virtual environment.

Called by ``mcv_peer.py`` as a subprocess:
``benchmarks/venvs/mcv/bin/python benchmarks/_mcv_runner.py IN.npz OUT.npy MAX_K TRIALS``
where IN holds raw counts (scipy ``save_npz``). The loop is the per-trial loop of
``molecular_cross_validation/scripts/pca_sweep.py`` (czbiohub-sf/molecular-cross-validation
at 04d9df0): binomial split of the dense counts with ``ut.split_molecules``, ``sqrt`` of both
halves, an uncentred ``randomized_svd`` at ``MAX_K``, then for every rank the reconstruction,
its conversion to the held-out depth and the MSE against the held-out half. Three changes,
in the peer's favour or needed to run it reproducibly: the conversion is ``ut.convert_exp_sqrt``
(the script's call of ``convert_expectations()`` passes the wrong arguments and fails at
HEAD); the losses the choice does not need (reconstruction and ground truth) are not
computed; and the loop's ``randomized_svd`` gets ``random_state=0``. The script passes no
``random_state`` there, which under the scikit-learn of its time meant the default seed 0;
since scikit-learn 1.2 the default is ``None`` (the global NumPy state), so the peer's chosen
rank moved between runs. A fixed integer seed restores the original behaviour and leaves the
splits' own ``RandomState`` stream untouched. Writes the held-out losses (trials × ranks)
and prints the seconds of the loop.
"""

from __future__ import annotations

import sys
import time

import molecular_cross_validation.util as ut
import numpy as np
from scipy import sparse
from sklearn.metrics import mean_squared_error
from sklearn.utils.extmath import randomized_svd


def main() -> None:
    source, target, max_k, n_trials = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    umis = sparse.load_npz(source).toarray()  # the script works on a dense array
    data_split, data_split_complement, overlap = ut.overlap_correction(0.9, None)
    random_state = np.random.RandomState(sum(map(ord, "biohub_0")))
    k_range = np.arange(1, max_k + 1)
    mcv_loss = np.empty((n_trials, k_range.size))
    start = time.perf_counter()
    for i in range(n_trials):
        umis_X, umis_Y = ut.split_molecules(umis, data_split, overlap, random_state)
        umis_X = np.sqrt(umis_X)
        umis_Y = np.sqrt(umis_Y)
        U, S, V = randomized_svd(umis_X, n_components=max_k, random_state=0)  # the default before scikit-learn 1.2
        US = U.dot(np.diag(S))
        for j, k in enumerate(k_range):
            pca_X = US[:, :k].dot(V[:k, :])
            conv_exp = ut.convert_exp_sqrt(pca_X, data_split, data_split_complement)
            mcv_loss[i, j] = mean_squared_error(umis_Y, conv_exp)
    elapsed = time.perf_counter() - start
    np.save(target, mcv_loss)
    print(f"{elapsed:.3f}")


if __name__ == "__main__":
    main()
