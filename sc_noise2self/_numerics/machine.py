"""What the machine offers: its memory, and threads on a busy machine.

Threads: optionally use only the cores other processes leave free.

Two threads on two cores that another job keeps busy compete with it for time slices.
With ``sc_noise2self.settings.adapt_threads = True``, each call first counts the runnable
threads of other processes (Linux's ``procs_running`` less this process's own, the least of
a few readings) and, where fewer cores than its threads are free, runs numba and BLAS/OpenMP
with one thread per free core (at least one) for that call. It never raises a limit the user
set (``NUMBA_NUM_THREADS``, ``numba.set_num_threads``, ``threadpoolctl``), and results do not
depend on the number of threads (``tests/test_determinism.py``), so only the time changes.

Off by default: it pays where several calibrations share the cores, and costs beside a program
that keeps its own threads busy regardless (it then takes a smaller share of the cores). It
does nothing where this process may run on only some of the machine's cores (a cpuset, as
batch schedulers give), because ``procs_running`` counts every core's threads.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, ParamSpec, TypeVar

import numba
from threadpoolctl import ThreadpoolController

from .. import _logging as logg
from .checks import check_flag

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from contextlib import AbstractContextManager

__all__ = [
    "Settings",
    "adapted_threads",
    "adapts_threads",
    "blas_threads",
    "default_max_dense_bytes",
    "fewer_threads",
    "free_cores",
    "settings",
]

_READINGS = 5
_READING_GAP_S = 0.002
_P = ParamSpec("_P")
_R = TypeVar("_R")


class Settings:
    """Package-wide settings: ``sc_noise2self.settings``."""

    def __init__(self) -> None:
        self._adapt_threads = False

    @property
    def adapt_threads(self) -> bool:
        """Use one thread per core other processes leave free, when fewer are free than threads (default False).

        Read at the start of each call of ``pp.denoise``, ``pp.pca``, ``pp.neighbors``,
        ``pp.split_counts`` and ``tl.calibrate`` (Linux, when this process may use every core;
        elsewhere nothing changes). It only lowers thread counts, and the results are the
        same bytes with any count. It pays where several jobs like this one share a machine,
        and costs where the other job keeps its threads busy regardless.
        """
        return self._adapt_threads

    @adapt_threads.setter
    def adapt_threads(self, value: bool) -> None:
        self._adapt_threads = check_flag(value, "settings.adapt_threads")

    def __repr__(self) -> str:
        return f"Settings(adapt_threads={self._adapt_threads})"


settings = Settings()


def default_max_dense_bytes() -> int:
    """Return a quarter of this machine's physical memory."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 4 * 2**30


_controller: tuple[int, ThreadpoolController] | None = None


def _thread_pools() -> ThreadpoolController:
    """Return the process's thread pools, found again only when a module was imported since (which may load one).

    ``ThreadpoolController()`` reads the list of loaded libraries (``/proc/self/maps`` on
    Linux) and opens each: about a millisecond with numpy and scipy loaded, more beside torch.
    """
    global _controller
    loaded = len(sys.modules)
    if _controller is None or _controller[0] != loaded:
        _controller = (loaded, ThreadpoolController())
    return _controller[1]


def blas_threads(limits: int | None = 1) -> AbstractContextManager[object]:
    """``threadpool_limits(limits, user_api="blas")`` without finding the libraries again on every call."""
    return _thread_pools().limit(limits=limits, user_api="blas")


def _cores() -> int | None:
    """Cores of the machine, or None where this process may not run on all of them (or it is unknown)."""
    try:
        allowed = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return None
    return allowed if allowed == os.cpu_count() else None


def _running() -> int | None:
    """Threads runnable on the machine now (``procs_running`` of ``/proc/stat``), or None where unknown."""
    try:
        with open("/proc/stat", "rb") as stat:
            for line in stat:
                if line.startswith(b"procs_running"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _own_running() -> int:
    """Threads of this process runnable now (the reading thread among them; BLAS threads still spinning too)."""
    running = 0
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return 1
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/stat", "rb") as stat:
                state = stat.read().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        running += state == b"R"
    return max(running, 1)


def free_cores() -> int | None:
    """Cores not taken by other processes' runnable threads (the least busy of a few readings), or None where unknown.

    This process's own runnable threads (the reader, and BLAS or numba threads still
    spinning after their last call) are not counted as others. Unknown off Linux, and where
    this process may run on only some of the cores (a cpuset).
    """
    cores = _cores()
    if cores is None:
        return None
    readings = []
    for i in range(_READINGS):
        if i:
            time.sleep(_READING_GAP_S)
        running = _running()
        if running is None:
            return None
        readings.append(running - _own_running())
    return max(0, cores - max(0, min(readings)))


def fewer_threads(threads: int, free: int | None) -> int | None:
    """Return the thread count to step down to from ``threads`` with ``free`` cores free, or None to keep it.

    One thread per free core, at least one; never more than ``threads``; None where the
    free cores are unknown.
    """
    if free is None or free >= threads:
        return None
    return max(1, free)


@contextmanager
def adapted_threads() -> Iterator[int]:
    """Within the block, numba and BLAS/OpenMP use at most one thread per free core (see the module).

    Yields the number of numba threads in use.
    """
    threads = numba.get_num_threads()
    free = free_cores() if settings.adapt_threads and threads > 1 else None
    fewer = fewer_threads(threads, free)
    if fewer is None:
        yield threads
        return
    logg.info(f"    other processes leave {free} core(s) free: running on {fewer} thread(s) instead of {threads}")
    pools = [pool for pool in _thread_pools().lib_controllers if pool.num_threads > fewer]
    before = [pool.num_threads for pool in pools]
    numba.set_num_threads(fewer)
    try:
        for pool in pools:
            pool.set_num_threads(fewer)
        yield fewer
    finally:
        numba.set_num_threads(threads)
        for pool, count in zip(pools, before, strict=True):
            pool.set_num_threads(count)


def adapts_threads(function: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run ``function`` within :func:`adapted_threads`."""

    @functools.wraps(function)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with adapted_threads():
            return function(*args, **kwargs)

    return wrapper
