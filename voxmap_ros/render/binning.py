"""Screen-space set-up shared by the reference and the Triton path (pure torch, any device).

1. Each cell's 8 corners are projected; the pixel rectangle that holds every pixel whose ray can
   meet the cell is kept (a cell reaching in front of the near plane gets the whole image).
2. The image is cut into TILE x TILE tiles. Each pixel has a ray-direction octant (sign bits of its
   world direction); a tile lists the octants of its pixels (a pinhole image holds up to 8).
3. Every (cell, tile) overlap becomes one entry per octant present in the tile; entries are sorted
   by (tile, octant, the cell's rank in that octant's mirrored Morton order). A group (tile,
   octant) is therefore a front-to-back list for all of its pixels: no per-pixel sorting.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .camera import Camera
from .voxels import VoxelSet, morton_keys, order_coords
from ..core.ranges import rank_in_range

TILE = 16
RECT_EPS_PX = 1e-3          # projected rectangles grow by this much (rounding of the corner projection)


@dataclass
class Bins:
    """Result of `bin_cells` (all on the voxels' device).

    rect (N, 4) int64 pixel rectangle [u0, u1] x [v0, v1] per cell (empty: u0 > u1);
    entries (E,) int64 cell indices, grouped; group_tile, group_octant (G,) int64; group_start,
    group_end (G,) int64 ranges into entries; pixel_octant (H, W) int64."""
    rect: torch.Tensor
    entries: torch.Tensor
    group_tile: torch.Tensor
    group_octant: torch.Tensor
    group_start: torch.Tensor
    group_end: torch.Tensor
    pixel_octant: torch.Tensor
    tiles_x: int
    tiles_y: int


def project_rects(v: VoxelSet, cam: Camera) -> torch.Tensor:
    """Pixel rectangles (N, 4) int64 (u0, u1, v0, v1) on the voxels' device, clipped to the image;
    empty where the cell is outside the image or the depth range."""
    dev = v.device
    lo = v.cell_lo_m().double().detach()
    size = v.cell_size_m().double().detach()
    corners = lo[:, None, :] + size[:, None, None] * torch.tensor(
        [[i & 1, (i >> 1) & 1, (i >> 2) & 1] for i in range(8)], dtype=torch.float64, device=dev)[None]
    c = cam.world_to_camera(corners)                                          # (N, 8, 3)
    z = c[..., 2]
    zmin, zmax = z.min(1).values, z.max(1).values
    K = cam.K.to(dev)
    zc = z.clamp_min(1e-9)
    u = (K[0, 0] * c[..., 0] + K[0, 1] * c[..., 1]) / zc + K[0, 2]
    vv = K[1, 1] * c[..., 1] / zc + K[1, 2]
    u0 = torch.ceil(u.min(1).values - RECT_EPS_PX)
    u1 = torch.floor(u.max(1).values + RECT_EPS_PX)
    v0 = torch.ceil(vv.min(1).values - RECT_EPS_PX)
    v1 = torch.floor(vv.max(1).values + RECT_EPS_PX)
    straddle = zmin < cam.near_m
    W, H = cam.width, cam.height
    u0 = torch.where(straddle, torch.zeros_like(u0), u0).clamp(-1, W)
    u1 = torch.where(straddle, torch.full_like(u1, W - 1), u1).clamp(-1, W)
    v0 = torch.where(straddle, torch.zeros_like(v0), v0).clamp(-1, H)
    v1 = torch.where(straddle, torch.full_like(v1, H - 1), v1).clamp(-1, H)
    rect = torch.stack([u0, u1, v0, v1], 1).long()
    out = (zmax <= cam.near_m) | (zmin >= cam.far_m)
    rect[:, 0] = torch.where(out, torch.full_like(rect[:, 0], W), rect[:, 0].clamp_min(0))
    rect[:, 1] = torch.where(out, torch.full_like(rect[:, 1], -1), rect[:, 1].clamp_max(W - 1))
    rect[:, 2] = rect[:, 2].clamp_min(0)
    rect[:, 3] = rect[:, 3].clamp_max(H - 1)
    return rect


def octant_ranks(v: VoxelSet, octants: list[int]) -> dict[int, torch.Tensor]:
    """{octant: rank (N,) int64 of each cell in that octant's front-to-back order}, on the voxels'
    device. Mirroring all three axes reverses the order, so an octant and its complement share
    one sort."""
    rel, size, extent = order_coords(v)
    n = rel.shape[0]
    out: dict[int, torch.Tensor] = {}
    for o in octants:
        if o in out:
            continue
        keys = morton_keys(rel, size, extent, o)
        order = torch.argsort(keys)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(n, device=order.device)
        out[o] = rank
        out[7 - o] = n - 1 - rank
    return out


def bin_cells(v: VoxelSet, cam: Camera, tile: int = TILE) -> Bins:
    """Project, bin and order the cells of `v` for camera `cam` (see the module docstring)."""
    dev = v.device
    W, H = cam.width, cam.height
    tx, ty = math.ceil(W / tile), math.ceil(H / tile)
    pix_oct = cam.octants().to(dev)
    rect = project_rects(v, cam)
    # Octants present per tile (bit mask).
    tile_of_pix = ((torch.arange(H, device=dev) // tile)[:, None] * tx + (torch.arange(W, device=dev) // tile)[None])
    mask = torch.zeros(tx * ty, dtype=torch.int64, device=dev)
    bits = torch.ones_like(pix_oct) << pix_oct
    for o in range(8):               # scatter-OR by octant (8 small passes, no atomics needed)
        sel = (pix_oct == o)
        if bool(sel.any()):
            mask[torch.unique(tile_of_pix[sel])] |= (1 << o)
    del bits
    present = [o for o in range(8) if bool(((mask >> o) & 1).any())]
    ok = (rect[:, 0] <= rect[:, 1]) & (rect[:, 2] <= rect[:, 3])
    cells = ok.nonzero().squeeze(1)
    empty = torch.zeros(0, dtype=torch.int64, device=dev)
    if cells.numel() == 0:
        return Bins(rect, empty, empty, empty, empty, empty, pix_oct, tx, ty)
    r = rect[cells]
    t0x, t1x, t0y, t1y = r[:, 0] // tile, r[:, 1] // tile, r[:, 2] // tile, r[:, 3] // tile
    nx, ny = t1x - t0x + 1, t1y - t0y + 1
    cnt = nx * ny
    cell_rep = torch.repeat_interleave(cells, cnt)
    idx = rank_in_range(cnt)
    nx_rep = torch.repeat_interleave(nx, cnt)
    tile_id = (torch.repeat_interleave(t0y, cnt) + idx // nx_rep) * tx + torch.repeat_interleave(t0x, cnt) + idx % nx_rep
    ranks = octant_ranks(v, present)
    keys, ents = [], []
    for o in present:
        has = ((mask[tile_id] >> o) & 1).bool()
        c = cell_rep[has]
        keys.append(((tile_id[has] * 8 + o) << 32) | ranks[o][c])
        ents.append(c)
    keys = torch.cat(keys)
    ents = torch.cat(ents)
    order = torch.argsort(keys)
    keys, ents = keys[order], ents[order]
    gkey, counts = torch.unique_consecutive(keys >> 32, return_counts=True)
    end = torch.cumsum(counts, 0)
    return Bins(rect, ents, gkey // 8, gkey % 8, end - counts, end, pix_oct, tx, ty)
