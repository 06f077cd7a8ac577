"""Autoencoder training and inference throughput (cells/s) on CPU and, when present, CUDA.

Run: ``.venv/bin/python benchmarks/autoencoder_throughput.py [--cells 20000 --genes 2000]``

Same seeded sparse data as ``pca_sweep.py`` (sqrt of counts, CSR). The network is the
default ``Autoencoder`` (one hidden layer of 256, bottleneck 32); training is one epoch of
minibatches sliced from the CSR matrix and densified per batch; inference streams blocks of
cells. Every device is measured in this one run, so the CUDA/CPU ratio is side by side.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from pca_sweep import simulate

from sc_noise2self._transform import transformed
from sc_noise2self.denoisers import Autoencoder


def measure(X, device: str, batch_size: int, epochs: int = 2) -> tuple[float, float]:
    """Cells per second for training (``epochs`` epochs) and for inference over all cells."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    n = X.shape[0]
    warm_up = Autoencoder(batch_size=batch_size, device=device).fit(X[:2048], np.array([1]))
    for _, predict in warm_up.sweep_values():
        predict(slice(0, 2048))
    model = Autoencoder(batch_size=batch_size, device=device, random_state=0).fit(X, np.array([epochs]))
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
    X = transformed(simulate(args.cells, args.genes, 1_500.0), "sqrt", None)
    print(
        f"data: {X.shape[0]} x {X.shape[1]} CSR, {X.nnz:,} nonzeros; torch {torch.__version__}, "
        f"{torch.get_num_threads()} CPU threads"
    )
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    results = {}
    for device in devices:
        for batch_size in (128, 1024):
            train, infer = measure(X, device, batch_size)
            results[device, batch_size] = (train, infer)
            print(f"{device:>4}, batch {batch_size:>4}: training {train:,.0f} cells/s, inference {infer:,.0f} cells/s")
    if "cuda" in devices:
        for batch_size in (128, 1024):
            (tc, ic), (tg, ig) = results["cpu", batch_size], results["cuda", batch_size]
            print(f"CUDA / CPU, batch {batch_size}: training x{tg / tc:.1f}, inference x{ig / ic:.1f}")
    else:
        print("CUDA: not available on this machine; no GPU figures.")


if __name__ == "__main__":
    main()
