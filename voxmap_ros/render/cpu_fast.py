"""Fast CPU path: the compiled twin of reference.py (kernels/cpu/render.cpp, C++/OpenMP).

Forward and backward run in float32 (float64 voxel sets are rounded to float32 and the
gradients returned in float64). The binning, ordering and compositing follow reference.py
exactly; tests compare the two. The shared library is the one core/native.py builds from all
kernels/cpu/*.cpp (nothing is compiled at import time).
"""
from __future__ import annotations

import ctypes
import math

import torch

from .camera import Camera
from .binning import RECT_EPS_PX, TILE
from .reference import DIR_EPS, pack_output_grads
from .voxels import SDF_X_MIN, VoxelSet, order_coords

_declared: dict = {"lib": None}
ABI = 3                    # vx_render_abi() of kernels/cpu/render.cpp


class _RenderParams(ctypes.Structure):       # mirrors RenderParams in kernels/cpu/render.cpp
    _fields_ = [("R", ctypes.c_double * 9), ("t", ctypes.c_double * 3), ("K", ctypes.c_double * 5),
                ("Minv", ctypes.c_double * 9), ("base", ctypes.c_double * 3), ("voxel", ctypes.c_double)] + \
               [(n, ctypes.c_float) for n in ("near_m", "far_m", "sharpness", "s_stop", "rect_eps", "dir_eps",
                                              "x_min")] + \
               [(n, ctypes.c_int32) for n in ("width", "height", "tile", "field", "samples", "nthreads")]


def _lib():
    from ..core import native
    lib, _ = native._lib()
    if _declared["lib"] is not lib:
        P, I64 = ctypes.c_void_p, ctypes.c_int64
        lib.vx_render_abi.argtypes = []
        lib.vx_render_abi.restype = ctypes.c_int
        lib.vx_render_forward.argtypes = [P, I64] + [P] * 10 + [I64, P]
        lib.vx_render_forward.restype = I64
        lib.vx_render_backward.argtypes = [P] * 8
        lib.vx_render_backward.restype = None
        lib.vx_render_cell_bytes.argtypes = []
        lib.vx_render_cell_bytes.restype = I64
        lib.vx_render_stats.argtypes = [P]
        lib.vx_render_stats.restype = None
        if lib.vx_render_abi() != ABI:
            raise RuntimeError("render kernel ABI mismatch")
        _declared["lib"] = lib
    return lib


def available() -> bool:
    """True when the compiled kernels (with the renderer) can be loaded."""
    try:
        from ..core import native
        if not native.available():
            return False
        _lib()
        return True
    except (ImportError, RuntimeError, AttributeError, OSError):
        return False


def last_stats() -> dict:
    """Phase times (ms) of the last compiled forward (pack, bin, sort + draw) and its counts."""
    out = (ctypes.c_double * 8)()
    _lib().vx_render_stats(out)
    return {"pack_ms": out[0], "bin_ms": out[1], "sort_draw_ms": out[2], "entries": int(out[3]),
            "pixel_cell_tests": int(out[4]), "pixel_cell_hits": int(out[5])}


_threads = {"n": 0}


def set_num_threads(n: int) -> None:
    """Threads of the render kernels; 0 (default) follows torch.get_num_threads()."""
    if int(n) < 0:
        raise ValueError(f"thread count must be >= 0, got {n}")
    _threads["n"] = int(n)


def _params(cam: Camera, field: str, sharpness: float, samples: int, t_min: float) -> _RenderParams:
    p = _RenderParams()
    R = cam.R.reshape(-1).tolist()
    p.R = (ctypes.c_double * 9)(*R)
    p.t = (ctypes.c_double * 3)(*cam.origin.tolist())
    K = cam.K
    p.K = (ctypes.c_double * 5)(float(K[0, 0]), float(K[0, 1]), float(K[0, 2]), float(K[1, 1]), float(K[1, 2]))
    p.Minv = (ctypes.c_double * 9)(*cam.ray_matrix().reshape(-1).tolist())
    p.near_m, p.far_m = cam.near_m, cam.far_m
    p.sharpness = sharpness
    p.s_stop = -math.log(t_min)
    p.rect_eps, p.dir_eps, p.x_min = RECT_EPS_PX, DIR_EPS, SDF_X_MIN
    p.width, p.height, p.tile = cam.width, cam.height, TILE
    p.field = 0 if field == "sdf" else 1
    p.samples = samples
    p.nthreads = _threads["n"] or torch.get_num_threads()
    return p


class _Prepared:
    """Contiguous kernel inputs of a voxel set: lattice coordinates (int32, relative to an aligned
    base), sizes, mirroring extent, float32 values and colours."""

    def __init__(self, v: VoxelSet):
        self.n = len(v)
        rel, lsize, extent = order_coords(v)
        base = (v.coords.long() - rel)[0] if self.n else torch.zeros(3, dtype=torch.int64)
        self.base_m = (v.origin_m.double().cpu() + base.double().cpu() * v.voxel_size_m).tolist()
        self.voxel = float(v.voxel_size_m)
        self.rel = rel.to(torch.int32).contiguous()
        self.lsize = lsize.to(torch.int32).contiguous()
        self.extent = extent.to(torch.int32).contiguous()
        self.values = v.values.detach().float().contiguous()
        self.colors = v.colors.detach().float().contiguous()
        self.ids = None if v.ids is None else v.ids.to(torch.int64).contiguous()


_cap = {"n": 1 << 16}


def _forward(prep: _Prepared, p: _RenderParams, H: int, W: int):
    lib = _lib()
    p.base = (ctypes.c_double * 3)(*prep.base_m)
    p.voxel = prep.voxel
    acc = torch.empty((H * W, 8), dtype=torch.float32)
    index = torch.empty((H * W,), dtype=torch.int64)
    cells = torch.empty(max(prep.n, 1) * int(lib.vx_render_cell_bytes()) + 32, dtype=torch.uint8)
    cptr = (cells.data_ptr() + 31) // 32 * 32                     # 32-byte aligned records
    ntiles = math.ceil(W / TILE) * math.ceil(H / TILE)
    group_off = torch.empty(ntiles * 8 + 1, dtype=torch.int64)
    while True:
        entries = torch.empty(max(_cap["n"], 1), dtype=torch.int64)
        e = lib.vx_render_forward(ctypes.byref(p), prep.n, prep.rel.data_ptr(), prep.lsize.data_ptr(),
                                  prep.extent.data_ptr(), prep.values.data_ptr(), prep.colors.data_ptr(),
                                  None if prep.ids is None else prep.ids.data_ptr(), cptr,
                                  acc.data_ptr(), index.data_ptr(), entries.data_ptr(), entries.numel(),
                                  group_off.data_ptr())
        if e >= 0:
            return acc, index, (cells, cptr), entries, group_off
        _cap["n"] = int(-e * 1.25) + 1024


class _RasterCpu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values, colors, prep, p, H, W):
        acc, index, cells, entries, group_off = _forward(prep, p, H, W)
        ctx.state = (prep, p, acc, cells, entries, group_off)
        ctx.dtype = values.dtype
        ctx.mark_non_differentiable(index)
        return acc[:, 0].to(values.dtype), acc[:, 1].to(values.dtype), acc[:, 2:5].to(values.dtype), \
            acc[:, 5:8].to(values.dtype), index

    @staticmethod
    def backward(ctx, gA, gD, gC, gN, gI):
        prep, p, acc, cells, entries, group_off = ctx.state
        n = prep.n
        g = pack_output_grads(gA, gD, gC, acc.shape[0])
        gv = torch.zeros((max(n, 1), 8), dtype=torch.float32)
        gc = torch.zeros((max(n, 1), 3), dtype=torch.float32)
        if n:
            _lib().vx_render_backward(ctypes.byref(p), cells[1], entries.data_ptr(), group_off.data_ptr(),
                                      acc.data_ptr(), g.contiguous().data_ptr(), gv.data_ptr(), gc.data_ptr())
        return gv[:n].to(ctx.dtype), gc[:n].to(ctx.dtype), None, None, None, None


def render_cpu(v: VoxelSet, cam: Camera, field: str, sharpness: float, samples: int, t_min: float):
    """Raw accumulations like reference.render_reference, from the compiled kernels (with the
    front-most cell already mapped through v.ids: key "voxel_id" instead of "index"). The voxel
    set must be on the CPU; float64 sets are drawn in float32, results in the values' dtype."""
    if v.device.type != "cpu":
        raise ValueError(f"the CPU render path needs CPU tensors, got {v.device}")
    prep = _Prepared(v)
    p = _params(cam, field, sharpness, samples, t_min)
    H, W = cam.height, cam.width
    A, D, C, N, I = _RasterCpu.apply(v.values, v.colors, prep, p, H, W)
    return {"alpha": A.reshape(H, W), "depth": D.reshape(H, W), "color": C.reshape(H, W, 3),
            "normal": N.reshape(H, W, 3), "voxel_id": I.reshape(H, W)}
