"""Autoencoder training and inference throughput (cells/s) on CPU and, when present, CUDA.

Run: ``.venv/bin/python benchmarks/autoencoder_throughput.py [--cells 20000 --genes 2000]``

Same seeded sparse data as ``pca_sweep.py`` (sqrt of counts, CSR). The network is the
default ``Autoencoder`` (one hidden layer of 256, bottleneck 32); training is one epoch of
minibatches sliced from the CSR matrix and densified per batch; inference streams blocks of
cells. Every device is measured in this one run, so the CUDA/CPU ratio is side by side; on
CUDA with bfloat16 autocast on and off (``Autoencoder(autocast=...)``), and for the
Poisson-likelihood decoder (trained on the counts) beside the squared-error network.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from pca_sweep import simulate

from sc_noise2self._transform import transformed
from sc_noise2self.denoisers import Autoencoder


def measure(
    X, counts, device: str, batch_size: int, *, autocast: bool = True, likelihood: str = "normal", epochs: int = 2
) -> tuple[float, float]:
    """Cells per second for training (``epochs`` epochs) and for inference over all cells."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    n = X.shape[0]
    settings = {"batch_size": batch_size, "device": device, "autocast": autocast, "likelihood": likelihood}

    def fitted(rows: slice, grid: np.ndarray, **extra: object) -> Autoencoder:
        model = Autoencoder(**settings, **extra)
        scales = np.ones(X[rows].shape[0])
        return model.fit_counts(X[rows], grid, counts=counts[rows], scales=scales, transform="sqrt")

    for _, predict in fitted(slice(0, 2048), np.array([1])).sweep_values():  # warm-up
        predict(slice(0, 2048))
    model = fitted(slice(None), np.array([epochs]), random_state=0)
    start = time.perf_counter()
    (_, predict), *_ = model.sweep_values()  # trains, then yields the predictor
    sync()
    train_rate = epochs * n / (time.perf_counter() - start)
    start = time.perf_counter()
    for i in range(0, n, 4096):
        predict(slice(i, min(i + 4096, n)))
    sync()
    return train_rate, n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cells", type=int, default=20_000)
    parser.add_argument("--genes", type=int, default=2_000)
    args = parser.parse_args()
    counts = simulate(args.cells, args.genes, 1_500.0)
    X = transformed(counts, "sqrt", None)
    print(
        f"data: {X.shape[0]} x {X.shape[1]} CSR, {X.nnz:,} nonzeros; torch {torch.__version__}, "
        f"{torch.get_num_threads()} CPU threads"
    )
    runs = [("cpu", True)] + ([("cuda", True), ("cuda", False)] if torch.cuda.is_available() else [])
    results = {}
    for likelihood in ("normal", "poisson"):
        for device, autocast in runs:
            for batch_size in (128, 1024):
                train, infer = measure(X, counts, device, batch_size, autocast=autocast, likelihood=likelihood)
                results[likelihood, device, autocast, batch_size] = (train, infer)
                label = f"{likelihood:>7}, {device:>4}{', bf16' if device == 'cuda' and autocast else ''}"
                print(f"{label}, batch {batch_size:>4}: training {train:,.0f} cells/s, inference {infer:,.0f} cells/s")
    if len(runs) > 1:
        for likelihood in ("normal", "poisson"):
            for batch_size in (128, 1024):
                tc, ic = results[likelihood, "cpu", True, batch_size]
                for autocast in (True, False):
                    tg, ig = results[likelihood, "cuda", autocast, batch_size]
                    print(
                        f"{likelihood}, CUDA{' bf16' if autocast else ' fp32'} / CPU, batch {batch_size}: "
                        f"training x{tg / tc:.1f}, inference x{ig / ic:.1f}"
                    )
    else:
        print("CUDA: not available on this machine; no GPU figures.")


if __name__ == "__main__":
    main()
