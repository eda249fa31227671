"""A comparable form of a JSON-like value, for tests that compare two code paths."""

from __future__ import annotations

import math
from typing import Any


def typed(v: Any) -> Any:
    """Tells 1 from 1.0 from True, keeps key order, and makes NaN equal to itself."""
    if isinstance(v, dict):
        return ("dict", [(k, typed(x)) for k, x in v.items()])
    if isinstance(v, list):
        return ("list", [typed(x) for x in v])
    if isinstance(v, float):
        return ("float", "nan" if math.isnan(v) else v.hex())
    return (type(v).__name__, v)
