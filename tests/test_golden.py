"""Same seed, same result: every recorded choice, loss curve and output digest (see ``tests/golden.py``)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from . import golden

RECORD = json.loads(golden.RECORD.read_text())
SAME_CPU = RECORD["cpu"] == golden.cpu_name()


def _compare_records(got: dict, want: dict, where: str) -> None:
    assert got.keys() == want.keys(), where
    for key, value in want.items():
        here = f"{where}.{key}"
        if key in ("loss", "loss_no_denoising", "sampling_dispersion") and not isinstance(value, str):
            # on another CPU the compiled kernels vectorise sums differently: rounding, not a change
            np.testing.assert_allclose(got[key], value, rtol=1e-12 if SAME_CPU else 1e-7, atol=0, err_msg=here)
        elif isinstance(value, dict):
            _compare_records(got[key], value, here)
        else:
            assert got[key] == value, here


def _compare_arrays(got: dict, want: dict, where: str) -> None:
    assert (got["dtype"], got["shape"]) == (want["dtype"], want["shape"]), where
    if SAME_CPU:
        assert got["sha256"] == want["sha256"], f"{where}: not the recorded bytes"
        return
    np.testing.assert_allclose(got["sample"], want["sample"], rtol=1e-5, atol=1e-5, err_msg=where)
    np.testing.assert_allclose([got["sum"], got["sumsq"]], [want["sum"], want["sumsq"]], rtol=1e-5, err_msg=where)


def _check(name: str) -> None:
    if name not in RECORD["cases"]:
        pytest.skip(f"{name} was not recorded")
    try:
        got = golden.run(name)
    except FileNotFoundError as missing:
        pytest.skip(f"{missing} not found (shared data sits beside the checkout)")
    want = RECORD["cases"][name]
    for key, record in want["records"].items():
        _compare_records(got["records"][key], record, f"{name}:{key}")
    assert got["arrays"].keys() == want["arrays"].keys()
    for key, digest in want["arrays"].items():
        _compare_arrays(got["arrays"][key], digest, f"{name}:{key}")


@pytest.mark.parametrize("name", list(golden.CASES))
def test_recorded_result(name):
    _check(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(golden.SLOW_CASES))
def test_recorded_result_on_full_data(name):
    _check(name)
