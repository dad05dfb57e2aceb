"""Triton path of the rasterizer (GPU forward and backward; kernels/triton/raster.py).

Binning and ordering are the torch code of binning.py (run on the voxels' device); the kernel
composites one (tile, octant) group per program. Under TRITON_INTERPRET=1 the same kernels run on
CPU tensors (the tests use this). Nothing here imports triton or touches CUDA until a render is
asked for: `available()` only looks for the package.
"""
from __future__ import annotations

import torch

from ..core import triton_kernels
from .binning import TILE, bin_cells
from .camera import Camera
from .reference import DIR_EPS, pack_output_grads
from .voxels import SDF_X_MIN, VoxelSet, normals

available, unavailable_reason, interpreting = triton_kernels.available, triton_kernels.unavailable_reason, \
    triton_kernels.interpreting


def _kernels():
    return triton_kernels.load("raster.py")


def _launch(args: dict, backward: bool, grad_acc=None, fwd_acc=None, grad_values=None, grad_colors=None):
    k = _kernels()
    b = args["bins"]
    G = int(b.group_tile.numel())
    dev = args["dev"]
    H, W = args["H"], args["W"]
    if G == 0:
        return
    dummy_f = torch.zeros(1, dtype=torch.float32, device=dev)
    M = args["M"]
    o = args["o"]
    k.raster_kernel[(G,)](
        b.group_tile, b.group_octant, b.group_start, b.group_end, b.entries, args["pix_oct"],
        args["lo"], args["size"], args["values"], args["colors"], args["normals"], args["rect"],
        args["out_acc"], args["out_index"],
        grad_acc if backward else dummy_f, fwd_acc if backward else dummy_f,
        grad_values if backward else dummy_f, grad_colors if backward else dummy_f,
        W, H, b.tiles_x,
        o[0], o[1], o[2], M[0][0], M[0][1], M[0][2], M[1][0], M[1][1], M[1][2], M[2][0], M[2][1], M[2][2],
        args["near"], args["far"], args["sharp"], SDF_X_MIN, args["T_stop"], DIR_EPS,
        FIELD=args["field"], K=args["samples"], TILE=TILE, BACKWARD=backward)


class _RasterTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values, colors, args):
        args = dict(args)
        args["values"] = values.detach().float().contiguous()
        args["colors"] = colors.detach().float().contiguous()
        _launch(args, backward=False)
        ctx.args = args
        ctx.dtype = values.dtype
        acc, index = args["out_acc"], args["out_index"]
        ctx.mark_non_differentiable(index)
        dt = values.dtype
        return acc[:, 0].to(dt), acc[:, 1].to(dt), acc[:, 2:5].to(dt), acc[:, 5:8].to(dt), index

    @staticmethod
    def backward(ctx, gA, gD, gC, gN, gI):
        args = ctx.args
        n = args["values"].shape[0]
        dev = args["dev"]
        g = pack_output_grads(gA, gD, gC, args["H"] * args["W"], dev)
        gv = torch.zeros((max(n, 1), 8), dtype=torch.float32, device=dev)
        gc = torch.zeros((max(n, 1), 3), dtype=torch.float32, device=dev)
        if n:
            _launch(args, True, g.contiguous(), args["out_acc"], gv, gc)
        return gv[:n].to(ctx.dtype), gc[:n].to(ctx.dtype), None


def render_triton(v: VoxelSet, cam: Camera, field: str, sharpness: float, samples: int, t_min: float):
    """Raw accumulations like reference.render_reference, from the Triton kernels: the voxel set
    on CUDA (CPU under TRITON_INTERPRET=1), drawn in float32, results in the values' dtype on its
    device."""
    dev = v.device
    H, W = cam.height, cam.width
    bins = bin_cells(v, cam)
    M = cam.ray_matrix().tolist()
    args = {
        "bins": bins, "dev": dev, "H": H, "W": W, "M": M, "o": cam.origin.tolist(),
        "pix_oct": bins.pixel_octant.reshape(-1).contiguous(),
        "lo": v.cell_lo_m().detach().float().contiguous(), "size": v.cell_size_m().detach().float().contiguous(),
        "normals": normals(v, field).float().contiguous(), "rect": bins.rect.to(torch.int32).contiguous(),
        "out_acc": torch.zeros((H * W, 8), dtype=torch.float32, device=dev),
        "out_index": torch.full((H * W,), -1, dtype=torch.int64, device=dev),
        "near": float(cam.near_m), "far": float(cam.far_m), "sharp": float(sharpness),
        "T_stop": float(t_min), "field": 0 if field == "sdf" else 1, "samples": int(samples),
    }
    A, D, C, N, I = _RasterTriton.apply(v.values, v.colors, args)
    return {"alpha": A.reshape(H, W), "depth": D.reshape(H, W), "color": C.reshape(H, W, 3),
            "normal": N.reshape(H, W, 3), "index": I.reshape(H, W)}
