"""``settings.adapt_threads``: fewer threads where other processes hold the cores, never more than allowed."""

from __future__ import annotations

import sys
import types

import numba
import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

import sc_noise2self as n2s
from sc_noise2self._numerics import machine as _threads
from sc_noise2self._numerics.machine import adapted_threads, blas_threads, free_cores


@pytest.fixture
def machine(monkeypatch):
    """A machine of ``cores`` cores with ``running`` runnable threads at the readings, ``own`` of them ours."""
    state = {"cores": 2, "running": [1], "own": 1}
    readings = iter(())

    def running():
        nonlocal readings
        try:
            return next(readings)
        except StopIteration:
            readings = iter(state["running"])
            return next(readings)

    monkeypatch.setattr(_threads, "_cores", lambda: state["cores"])
    monkeypatch.setattr(_threads, "_running", running)
    monkeypatch.setattr(_threads, "_own_running", lambda: state["own"])
    monkeypatch.setattr(n2s.settings, "_adapt_threads", True)
    monkeypatch.setattr(_threads, "_READING_GAP_S", 0.0)
    return state


@pytest.fixture
def two_threads():
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba was started with one thread")
    before = numba.get_num_threads()
    numba.set_num_threads(2)
    yield
    numba.set_num_threads(before)


def _blas_threads() -> int:
    return max((pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"), default=1)


def test_free_cores_counts_other_runnable_threads_at_their_least(machine):
    machine["running"] = [1]
    assert free_cores() == 2  # only the reading thread runs
    machine["running"] = [3, 2, 3, 3, 4]
    assert free_cores() == 1  # one other thread at the quietest reading
    machine["running"] = [6]
    assert free_cores() == 0
    machine["cores"], machine["running"] = 16, [5]
    assert free_cores() == 12


def test_this_processs_own_runnable_threads_are_not_others(machine):
    machine["running"], machine["own"] = [3], 3  # e.g. our BLAS threads still spinning after a product
    assert free_cores() == 2
    machine["running"], machine["own"] = [4], 2
    assert free_cores() == 0


def test_free_cores_is_unknown_without_proc_stat(monkeypatch):
    monkeypatch.setattr(_threads, "_running", lambda: None)
    assert free_cores() is None


def test_the_running_counts_are_read_from_this_machine():
    running = _threads._running()
    assert running is None or running >= 1  # at least the thread that reads it
    assert _threads._own_running() >= 1


def test_busy_cores_lower_numba_and_blas_threads_within_the_call_only(machine, two_threads):
    machine["running"] = [3]  # two other threads on two cores
    blas = _blas_threads()
    with adapted_threads() as threads:
        assert threads == 1
        assert numba.get_num_threads() == 1
        assert _blas_threads() == 1
    assert numba.get_num_threads() == 2
    assert _blas_threads() == blas


def test_stepping_down_is_logged(machine, two_threads, monkeypatch):
    said = []
    monkeypatch.setattr(_threads.logg, "info", said.append)
    machine["running"] = [3]
    with adapted_threads():
        pass
    assert said == ["    other processes leave 0 core(s) free: running on 1 thread(s) instead of 2"]
    machine["running"] = [1]
    with adapted_threads():
        pass
    assert len(said) == 1  # nothing to say on an idle machine


def test_an_idle_machine_keeps_every_thread(machine, two_threads):
    machine["running"] = [1]
    with adapted_threads() as threads:
        assert threads == 2
        assert numba.get_num_threads() == 2


def test_a_lower_limit_set_by_the_user_is_never_raised(machine, two_threads):
    machine["running"] = [1]
    numba.set_num_threads(1)
    with threadpool_limits(limits=1), adapted_threads() as threads:
        assert threads == 1
        assert numba.get_num_threads() == 1
        assert _blas_threads() == 1
    assert numba.get_num_threads() == 1


def test_the_setting_turns_it_on_and_off(machine, two_threads):
    machine["running"] = [5]
    n2s.settings.adapt_threads = False
    with adapted_threads() as threads:
        assert threads == 2
    n2s.settings.adapt_threads = True
    with adapted_threads() as threads:
        assert threads == 1
    assert "adapt_threads=True" in repr(n2s.settings)


def test_it_is_off_by_default():
    assert _threads.Settings().adapt_threads is False


def test_a_process_held_to_some_cores_is_left_alone(monkeypatch):
    monkeypatch.setattr(_threads.os, "sched_getaffinity", lambda _pid: {0})
    monkeypatch.setattr(_threads.os, "cpu_count", lambda: 64)
    assert _threads._cores() is None  # procs_running counts the other 63 cores' threads too
    assert free_cores() is None


@pytest.mark.parametrize("value", [1, 0, "yes", None, np.array([True])])
def test_the_setting_takes_only_booleans(value):
    with pytest.raises(ValueError, match=r"settings\.adapt_threads must be True or False"):
        n2s.settings.adapt_threads = value
    assert n2s.settings.adapt_threads is False


def test_threads_are_restored_when_the_call_fails(machine, two_threads):
    machine["running"] = [4]
    adata = n2s.datasets.pbmc2k()[:50].copy()
    with pytest.raises(ValueError, match="layer"):
        n2s.pp.denoise(adata, layer="missing", progress=False)
    assert numba.get_num_threads() == 2


def test_a_busy_machine_gives_the_same_bytes(machine, two_threads):
    adata = n2s.datasets.pbmc2k()[:300].copy()
    results = []
    for running in ([1], [4]):
        machine["running"] = running
        result = n2s.tl.calibrate(adata, grid=[1, 2, 4, 8], progress=False, random_state=0)
        results.append(result.loss.tobytes())
    assert results[0] == results[1]


def test_blas_threads_limits_restores_and_finds_libraries_loaded_since(monkeypatch):
    """One BLAS thread inside, every pool as it was after; the libraries looked up again only after an import."""
    before = threadpool_info()
    with threadpool_limits(limits=2, user_api="blas"):
        two = threadpool_info()
        with blas_threads(1):
            assert _blas_threads() == 1
        assert threadpool_info() == two
        with blas_threads(None):
            assert threadpool_info() == two
    assert threadpool_info() == before
    first = _threads._thread_pools()
    assert _threads._thread_pools() is first  # nothing imported since: the libraries are not read again
    monkeypatch.setitem(sys.modules, "a_module_just_imported", types.ModuleType("a_module_just_imported"))
    assert _threads._thread_pools() is not first  # an import may have loaded a library
