"""Finding and loading the Triton kernels of kernels/triton/ (GPU; CPU tensors under
TRITON_INTERPRET=1, which the tests use).

Nothing here imports triton or touches CUDA until a kernel module is asked for: `available()`
only looks for the package, so a machine without triton (or without a GPU) pays nothing.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

_loaded: dict = {}


def available() -> bool:
    """True when the triton package is importable (without importing it)."""
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):
        return False


def unavailable_reason() -> str:
    return "" if available() else "the 'triton' package is not installed (pip install triton)"


def interpreting() -> bool:
    """True when Triton runs kernels on CPU tensors through its interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def usable_on(device) -> bool:
    """True when a Triton kernel can run on tensors of `device`: CUDA, or the CPU when interpreting."""
    kind = getattr(device, "type", device)
    return available() and (kind == "cuda" or (kind == "cpu" and interpreting()))


def kernel_paths(filename: str) -> list[Path]:
    """Candidate locations of kernels/triton/<filename>: the source tree, then an installed share/."""
    return [Path(__file__).resolve().parents[2] / "kernels" / "triton" / filename,
            Path(sys.prefix) / "share" / "voxmap_ros" / "kernels" / "triton" / filename]


def load(filename: str):
    """The kernel module kernels/triton/<filename>, imported once (this imports triton)."""
    if filename not in _loaded:
        path = next((p for p in kernel_paths(filename) if p.is_file()), None)
        if path is None:
            raise RuntimeError(f"kernels/triton/{filename} not found in " + ", ".join(map(str, kernel_paths(filename))))
        name = "voxmap_ros_triton_" + Path(filename).stem
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod                  # triton.jit reads the source through the module
        spec.loader.exec_module(mod)
        _loaded[filename] = mod
    return _loaded[filename]
