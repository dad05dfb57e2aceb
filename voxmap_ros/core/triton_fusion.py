"""Triton twin of the RGB-D voxel update (kernels/triton/fusion.py), for maps on CUDA.

Only the per-voxel arithmetic of integrate.rgbd_update_bricks moves into the kernel (one program
per brick, one lane per voxel); the truncation-band bricks, the clearing set and the allocation
stay the torch code of integrate.integrate_rgbd_torch, on the map's device. LiDAR on a CUDA map
runs the torch path. Under TRITON_INTERPRET=1 the kernel runs on CPU tensors: the tests compare it
with the torch reference that way.
"""
from __future__ import annotations

import contextlib

import torch

from . import triton_kernels
from .integrate import FusionParams, integrate_rgbd_torch
from .octree import BRICK, SparseVoxelOctree

NUM_WARPS = 4          # 512 lanes per program = 4 warps of 32 threads x 4 elements


def rgbd_update_bricks_triton(octree: SparseVoxelOctree, slots: torch.Tensor, depth_m: torch.Tensor,
                              rgb: torch.Tensor | None, K: torch.Tensor, T_W_C: torch.Tensor,
                              p: FusionParams) -> None:
    """The update of integrate.rgbd_update_bricks in one kernel launch. slots (M,) int64 alive
    brick slots; depth_m (H, W) float32 metres; rgb (H, W, 3) uint8 or None; K (3, 3) and T_W_C
    (4, 4) float (read on the host); all tensors on the map's device (CUDA, or CPU when
    interpreting). The octree's attributes must have their default dtypes (float16 / uint8)."""
    dev = octree.device
    if not triton_kernels.usable_on(dev):
        raise ValueError(f"the Triton RGB-D update needs a CUDA map (or TRITON_INTERPRET=1 on the CPU), "
                         f"got device {dev} ({triton_kernels.unavailable_reason() or 'not interpreting'})")
    a = octree.attrs
    for name, dtype in (("tsdf", torch.float16), ("weight", torch.float16), ("occ", torch.float16),
                        ("color", torch.uint8)):
        if a[name].dtype != dtype or not a[name].is_contiguous():
            raise ValueError(f"attribute '{name}' must be contiguous {dtype} for the Triton kernel, "
                             f"got {a[name].dtype}")
    if octree.brick_coord.dtype != torch.int32 or not octree.brick_coord.is_contiguous():
        raise ValueError(f"brick_coord must be contiguous int32, got {octree.brick_coord.dtype}")
    if depth_m.dim() != 2:
        raise ValueError(f"depth_m must be (H, W), got shape {tuple(depth_m.shape)}")
    H, W = depth_m.shape
    if rgb is not None and tuple(rgb.shape) != (H, W, 3):
        raise ValueError(f"rgb must be (H, W, 3) = ({H}, {W}, 3) like the depth image, got {tuple(rgb.shape)}")
    if slots.numel() == 0:
        return
    Kh = [float(x) for x in K.reshape(-1).tolist()]
    Th = T_W_C.double().cpu().tolist()
    R = [Th[i][j] for i in range(3) for j in range(3)]
    depth = depth_m.to(dev, torch.float32).contiguous()
    has_rgb = rgb is not None
    rgb_t = rgb.to(dev, torch.uint8).contiguous() if has_rgb else torch.zeros(3, dtype=torch.uint8, device=dev)
    k = triton_kernels.load("fusion.py")
    # Triton launches on the current CUDA device, not on the tensors' one: make it the map's.
    with torch.cuda.device(dev) if dev.type == "cuda" else contextlib.nullcontext():
        k.rgbd_update_kernel[(int(slots.numel()),)](
            slots.to(dev, torch.int64).contiguous(), octree.brick_coord, depth, rgb_t,
            a["tsdf"], a["weight"], a["color"], a["occ"],
            H, W, Kh[0], Kh[4], Kh[2], Kh[5], *R, Th[0][3], Th[1][3], Th[2][3],
            p.voxel_size_m, p.trunc_m, p.rgbd_min_m, p.rgbd_max_m, p.max_weight, p.l_hit, p.l_miss, p.l_min, p.l_max,
            p.pixel_round, HAS_RGB=has_rgb, DEPTH_WEIGHTING=bool(p.depth_weighting), BRICK=BRICK, num_warps=NUM_WARPS,
            enable_fp_fusion=False)                 # no FMA contraction: each step rounds as in the reference


def integrate_rgbd_triton(octree: SparseVoxelOctree, depth_m: torch.Tensor, rgb: torch.Tensor | None,
                          K: torch.Tensor, T_W_C: torch.Tensor, p: FusionParams) -> torch.Tensor:
    """integrate.integrate_rgbd_torch with the voxel update in the Triton kernel (same arguments,
    same result). Returns the visited brick slots (M,) int64."""
    return integrate_rgbd_torch(octree, depth_m, rgb, K, T_W_C, p, update_bricks=rgbd_update_bricks_triton)
