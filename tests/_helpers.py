"""Array-type parametrisation in scanpy's style."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

ARRAY_TYPES = [
    pytest.param(np.asarray, id="ndarray"),
    pytest.param(sparse.csr_matrix, id="csr_matrix"),
    pytest.param(sparse.csc_matrix, id="csc_matrix"),
    pytest.param(sparse.csr_array, id="csr_array"),
]
DTYPES = [
    pytest.param(np.int32, id="int32"),
    pytest.param(np.int64, id="int64"),
    pytest.param(np.float32, id="float32"),
    pytest.param(np.float64, id="float64"),
]


def as_type(counts: sparse.csr_matrix, array_type, dtype):
    dense = counts.toarray().astype(dtype)
    return array_type(dense)


def dense(x) -> np.ndarray:
    return x.toarray() if sparse.issparse(x) else np.asarray(x)
