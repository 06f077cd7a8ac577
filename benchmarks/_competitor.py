"""A CPU-bound competitor process, as a second user's job on a shared machine would be."""

from __future__ import annotations

import subprocess
import sys
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

BLAS_LOOP = """
# A program that keeps its BLAS threads busy, as another user's job would.
import numpy as np
a = np.random.default_rng(0).random((1500, 1500))
while True:
    a = a @ a
    a /= np.abs(a).max()
"""


@contextmanager
def competing(loaded: bool) -> Iterator[None]:
    """Run the body beside a process multiplying matrices with BLAS at its default threads (when ``loaded``)."""
    if not loaded:
        yield
        return
    competitor = subprocess.Popen([sys.executable, "-c", BLAS_LOOP])
    time.sleep(5)  # past its start-up, into its products
    try:
        yield
    finally:
        competitor.kill()
        competitor.wait()
