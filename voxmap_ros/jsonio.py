"""JSON that strict parsers accept: numpy values as Python ones, non-finite floats as null.

`json.dumps` writes inf and nan as the non-standard `Infinity` / `NaN` (an empty mesh has infinite
distances), which jq, JavaScript and most JSON libraries refuse.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np


def json_safe(o):
    """A copy of `o` (dicts, lists, tuples, numpy scalars and arrays, floats, paths) that json.dumps
    writes as standard JSON: non-finite floats become None, paths strings."""
    if isinstance(o, dict):
        return {str(k): json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [json_safe(v) for v in o]
    if isinstance(o, np.ndarray):
        return json_safe(o.tolist())
    if isinstance(o, np.generic):
        return json_safe(o.item())
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, Path):
        return str(o)
    return o


def dumps(o, **kwargs) -> str:
    """json.dumps of json_safe(o), refusing anything still not standard JSON."""
    return json.dumps(json_safe(o), allow_nan=False, **kwargs)
