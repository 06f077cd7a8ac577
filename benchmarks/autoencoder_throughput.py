"""Autoencoder training and inference throughput (cells/s) on CPU and, when present, CUDA.

Run: ``.venv/bin/python benchmarks/autoencoder_throughput.py [--cells 20000 --genes 2000]``

Same seeded sparse data as ``pca_sweep.py`` (sqrt of counts, CSR). The network is the
default ``Autoencoder`` (one hidden layer of 256, bottleneck 32); training is one epoch of
minibatches sliced from the CSR matrix and densified per batch; inference streams blocks of
cells. Every device is measured in this one run, so the CUDA/CPU ratio is side by side; on
CUDA with bfloat16 autocast on and off (``Autoencoder(autocast=...)``), and for the
Poisson-likelihood decoder (trained on the counts) beside the squared-error network.
On CUDA the previous transfer path (each minibatch densified on the host and copied
through pinned memory) is measured in the same run too, as the baseline of the current
one (the matrix's nonzeros copied once, minibatches densified on the GPU). The count
decoder's output step (softmax, rates, ``E[T(s X)]`` lookup) is timed both ways on one
block, one compiled pass against the previous NumPy steps, and the Poisson decoder's
inference is measured with the previous steps too ("NumPy output step" rows) and, on CUDA,
with the step on the host instead of the device.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import numpy as np
import torch
from _fitted import fit
from _synthetic import simulate

from sc_noise2self._numerics.transform import expected_values, transformed
from sc_noise2self.denoisers import ArrayData, Autoencoder
from sc_noise2self.denoisers.autoencoder import _train as _ae_train
from sc_noise2self.denoisers.autoencoder._train import DeviceExpected


def _host_batch(X, rows, device: torch.device) -> torch.Tensor:
    """The previous CUDA path: a dense batch made on the host, copied through pinned memory."""
    batch = torch.from_numpy(np.asarray(X[rows].toarray(), dtype=np.float32))
    return batch.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else batch


@contextlib.contextmanager
def host_batches():
    """Run the autoencoder with the previous transfer path, for the baseline."""
    saved = _ae_train.to_device, _ae_train.rows_on
    _ae_train.to_device = _host_batch
    _ae_train.rows_on = lambda X, device: lambda rows: _host_batch(X, rows, device)
    try:
        yield
    finally:
        _ae_train.to_device, _ae_train.rows_on = saved


def _numpy_output_step(self, logits: np.ndarray, library: np.ndarray, rows: slice) -> np.ndarray:
    """The previous count-decoder output: float64 softmax, rates and table lookup as NumPy steps."""
    expected, scales = self.expected_
    shares = np.exp(logits - logits.max(axis=1, keepdims=True), dtype=np.float64)
    rates = shares * (library / shares.sum(axis=1))[:, None]
    return expected(rates, scales[rows]).astype(np.float32)


@contextlib.contextmanager
def host_output_step(*, numpy_steps: bool = False):
    """Run the count decoders' output step on the host (on CUDA too): one compiled pass, or the previous NumPy steps."""
    saved = Autoencoder._expected, Autoencoder._output_on_device
    Autoencoder._output_on_device = lambda self: False
    if numpy_steps:
        Autoencoder._expected = _numpy_output_step
    try:
        yield
    finally:
        Autoencoder._expected, Autoencoder._output_on_device = saved


def output_step(counts, repeats: int = 5) -> None:
    """Time the count decoder's output step on one block of 4,096 cells: one pass vs the NumPy steps."""
    rng = np.random.default_rng(0)
    n = min(4_096, counts.shape[0])
    logits = (2.0 * rng.standard_normal((n, counts.shape[1]))).astype(np.float32)
    library = np.asarray(counts[:n].sum(axis=1), dtype=np.float64).ravel()
    scales = 1e4 / np.maximum(library, 1.0)
    model = Autoencoder()
    model.expected_ = (expected_values("log1p", scales=scales, max_rate=float(library.max())), scales)
    rows = slice(0, n)
    outputs, times = {}, {}
    for name, step in (("one pass", model._expected), ("NumPy steps", lambda *a: _numpy_output_step(model, *a))):
        outputs[name] = step(logits, library, rows)  # warm-up: compiles
        best = np.inf
        for _ in range(repeats):
            start = time.perf_counter()
            step(logits, library, rows)
            best = min(best, time.perf_counter() - start)
        times[name] = best
    print(
        f"count decoder output step, {n} x {counts.shape[1]} block (log1p per 10,000): one pass "
        f"{1e3 * times['one pass']:.1f} ms, NumPy steps (previous) {1e3 * times['NumPy steps']:.1f} ms, "
        f"x{times['NumPy steps'] / times['one pass']:.1f}; same bytes: "
        f"{np.array_equal(outputs['one pass'], outputs['NumPy steps'])}"
    )
    if torch.cuda.is_available():  # the step on the GPU, from logits there to the float32 output on the host
        device = torch.device("cuda")
        step = DeviceExpected(model.expected_[0], library, scales, device)
        on_device = torch.as_tensor(logits, device=device)
        gpu = step(on_device, 0, n).cpu().numpy()
        best = np.inf
        for _ in range(repeats):
            torch.cuda.synchronize()
            start = time.perf_counter()
            step(on_device, 0, n).cpu().numpy()
            best = min(best, time.perf_counter() - start)
        print(
            f"the same block on the GPU (DeviceExpected, with the copy back): {1e3 * best:.1f} ms, "
            f"x{times['one pass'] / best:.1f} the host's one pass; largest relative difference "
            f"{np.max(np.abs(gpu - outputs['one pass']) / np.maximum(np.abs(outputs['one pass']), 1e-6)):.1e}"
        )


def measure(
    X, counts, device: str, batch_size: int, *, autocast: bool = True, likelihood: str = "normal", epochs: int = 2
) -> tuple[float, float]:
    """Cells per second for training (``epochs`` epochs) and for inference over all cells."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    n = X.shape[0]
    settings = {"batch_size": batch_size, "device": device, "autocast": autocast, "likelihood": likelihood}

    def fitted(rows: slice, grid: np.ndarray, **extra: object) -> tuple[Autoencoder, ArrayData]:
        model = Autoencoder(**settings, **extra)
        scales = np.ones(X[rows].shape[0])
        return fit(model, X[rows], grid, counts[rows], scales=scales, transform="sqrt")

    model, data = fitted(slice(0, 2048), np.array([1]))
    for step in model.values():  # warm-up
        step.predict(data.block(slice(0, 2048)))
    model, data = fitted(slice(None), np.array([epochs]), random_state=0)
    blocks = [data.block(slice(i, min(i + 4096, n))) for i in range(0, n, 4096)]  # made outside the timing
    start = time.perf_counter()
    step, *_ = model.values()  # trains, then yields the predictor
    sync()
    train_rate = epochs * n / (time.perf_counter() - start)
    start = time.perf_counter()
    for block in blocks:
        step.predict(block)
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
    output_step(counts)
    # (device, bf16 autocast, the previous host transfer path)
    runs = [("cpu", True, False)]
    if torch.cuda.is_available():
        runs += [("cuda", True, False), ("cuda", False, False), ("cuda", True, True)]
    results = {}
    for likelihood in ("normal", "poisson"):
        for run in runs:
            device, autocast, host = run
            for batch_size in (128, 1024):
                with host_batches() if host else contextlib.nullcontext():
                    rates = measure(X, counts, device, batch_size, autocast=autocast, likelihood=likelihood)
                results[likelihood, run, batch_size] = rates
                label = f"{likelihood:>7}, {device:>4}{', bf16' if device == 'cuda' and autocast else ''}"
                label += ", host batches (previous)" if host else ""
                print(f"{label}, batch {batch_size:>4}: training {rates[0]:,.0f}, inference {rates[1]:,.0f} cells/s")
    # The Poisson decoder's output step, at batches of 1,024: on CUDA, on the device (current), the
    # host's compiled pass, and the NumPy steps before it; on the CPU, the compiled pass and NumPy steps.
    for device in [run[0] for run in runs[:2]]:
        current = results["poisson", runs[0] if device == "cpu" else runs[1], 1024][1]
        steps = [("NumPy output step (previous)", True)]
        if device == "cuda":
            steps.insert(0, ("output step on the host, one pass", False))
        for label, numpy_steps in steps:
            with host_output_step(numpy_steps=numpy_steps):
                _, other = measure(X, counts, device, 1024, likelihood="poisson")
            print(
                f"poisson, {device:>4}, batch 1024, {label}: inference {other:,.0f} cells/s; "
                f"current / this x{current / other:.1f}"
            )
    if len(runs) == 1:
        print("CUDA: not available on this machine; no GPU figures.")
        return
    for likelihood in ("normal", "poisson"):
        for batch_size in (128, 1024):
            tc, ic = results[likelihood, runs[0], batch_size]
            names = ("CUDA bf16 / CPU", "CUDA fp32 / CPU", "CUDA bf16, host batches / CPU")
            for run, name in zip(runs[1:], names, strict=True):
                tg, ig = results[likelihood, run, batch_size]
                print(f"{likelihood}, {name}, batch {batch_size}: training x{tg / tc:.1f}, inference x{ig / ic:.1f}")
            tn, i_n = results[likelihood, runs[1], batch_size]
            to, io = results[likelihood, runs[3], batch_size]
            print(
                f"{likelihood}, CUDA bf16, batches on the GPU / host batches, batch {batch_size}: "
                f"training x{tn / to:.1f}, inference x{i_n / io:.1f}"
            )


if __name__ == "__main__":
    main()
