"""Type aliases shared across modules."""

from __future__ import annotations

from typing import Literal, TypeAlias

import numpy as np
from scipy import sparse

ArrayLike: TypeAlias = np.ndarray | sparse.spmatrix | sparse.sparray
RandomState: TypeAlias = int | np.random.Generator | None
TransformName: TypeAlias = Literal["sqrt", "log1p", "none"]
LossName: TypeAlias = Literal["mse", "poisson"]
SplitScheme: TypeAlias = Literal["binomial", "multinomial"]
Select: TypeAlias = Literal["min", "1se"]
Sampling: TypeAlias = Literal["poisson", "negative_binomial"]
Depth: TypeAlias = Literal["held_out", "output"]
Calibration: TypeAlias = Literal["mcv", "genes"]
Empty: TypeAlias = Literal["drop", "error"]
