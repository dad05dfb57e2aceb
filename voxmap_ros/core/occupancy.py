"""Occupancy outputs: occupied cells in 3D (any level) and a 2D grid projected from a height band."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from . import morton
from .octree import BRICK, SparseVoxelOctree, VOXEL_OFFSETS
from ..types import Grid2D

UNKNOWN, FREE, OCCUPIED = -1, 0, 100


def occupied_voxels(octree: SparseVoxelOctree, threshold_logodds: float, level: int = 0):
    """Centres of occupied cells at `level`: (points (N, 3) float32 metres, colors (N, 3) uint8),
    numpy. Level 0 = voxels (colour from the colour layer); level L >= 1 = octree nodes whose
    subtree holds an occupied voxel (colour grey), at their centres."""
    octree.flush_summaries()
    vs = octree.voxel_size_m
    if level == 0:
        slots = octree.alive_slots()
        occ = octree.attrs["occ"][slots].float()
        b, v = (occ > threshold_logodds).nonzero(as_tuple=True)
        idx = octree.brick_coord[slots[b]].long() * BRICK + VOXEL_OFFSETS.to(octree.device)[v]
        pts = ((idx.double() + 0.5) * vs).float()
        cols = octree.attrs["color"][slots[b], v]
        return pts.cpu().numpy(), cols.cpu().numpy()
    keys, ids = octree.table.items()
    ids = ids.long()
    sel = (morton.level_of(keys) == level) & (octree.node_max_occ[ids] > threshold_logodds)
    coords, _ = morton.decode(keys[sel])
    size = vs * BRICK * (1 << level)
    pts = ((coords.double() + 0.5) * size).float().cpu().numpy()
    return pts, np.full((len(pts), 3), 160, np.uint8)


def centre_index_range(lo_m: float, hi_m: float, voxel_size_m: float) -> tuple[int, int]:
    """(first, last) voxel index k whose centre (k + 1/2) * voxel_size_m (float64) lies in
    [lo_m, hi_m]; first > last when none does. Decided on the centres themselves, so a band edge
    that is a centre includes that voxel whatever lo_m / voxel_size_m rounds to."""
    first = math.ceil(lo_m / voxel_size_m - 0.5)
    first += 1 if (first + 0.5) * voxel_size_m < lo_m else -1 if (first - 0.5) * voxel_size_m >= lo_m else 0
    last = math.floor(hi_m / voxel_size_m - 0.5)
    last += -1 if (last + 0.5) * voxel_size_m > hi_m else 1 if (last + 1.5) * voxel_size_m <= hi_m else 0
    return first, last


def project_2d(octree: SparseVoxelOctree, z_min_m: float, z_max_m: float, threshold_logodds: float) -> Grid2D:
    """2D grid (nav_msgs/OccupancyGrid semantics) from the voxels whose centres lie in
    [z_min_m, z_max_m]: occupied if any is occupied, free if any is more likely free (log-odds < 0) and none occupied,
    unknown otherwise. Resolution = voxel size. Pruned free subtrees count as free."""
    octree.flush_summaries()
    vs = octree.voxel_size_m
    slots = octree.alive_slots()
    lo_z, hi_z = centre_index_range(z_min_m, z_max_m, vs)
    free_boxes = _pruned_free_boxes(octree)
    if slots.numel() == 0 and free_boxes.shape[0] == 0:
        return Grid2D(np.full((1, 1), UNKNOWN, np.int8), vs, (0.0, 0.0))
    # Grid extent from all bricks and pruned boxes (voxel units, xy).
    coords = octree.brick_coord[slots].long() * BRICK
    ext_lo = [coords[:, :2].min(0).values] if slots.numel() else []
    ext_hi = [coords[:, :2].max(0).values + BRICK] if slots.numel() else []
    if free_boxes.shape[0]:
        ext_lo.append(free_boxes[:, 0, :2].min(0).values)
        ext_hi.append(free_boxes[:, 1, :2].max(0).values)
    lo = torch.stack(ext_lo).min(0).values
    hi = torch.stack(ext_hi).max(0).values
    W, H = int(hi[0] - lo[0]), int(hi[1] - lo[1])
    state = torch.full((H * W,), UNKNOWN, dtype=torch.int8, device=octree.device)
    # Pruned boxes first (only known-free), then voxels overwrite with their own knowledge.
    for box in free_boxes.tolist():
        (x0, y0, z0), (x1, y1, z1) = box
        if z1 - 1 < lo_z or z0 > hi_z:
            continue
        g = state.view(H, W)
        g[y0 - int(lo[1]):y1 - int(lo[1]), x0 - int(lo[0]):x1 - int(lo[0])] = FREE
    if slots.numel():
        zc = coords[:, 2]
        band = (zc + BRICK - 1 >= lo_z) & (zc <= hi_z)
        s = slots[band]
        c = coords[band]
        occ = octree.attrs["occ"][s].float()
        off = VOXEL_OFFSETS.to(octree.device)
        vz = c[:, None, 2] + off[None, :, 2]
        in_band = (vz >= lo_z) & (vz <= hi_z)
        known = in_band & (occ < 0)           # evidence of free space; TSDF weight alone is not
        occupied = in_band & (occ > threshold_logodds)
        cell = ((c[:, None, 1] + off[None, :, 1] - lo[1]) * W + (c[:, None, 0] + off[None, :, 0] - lo[0]))
        is_known = torch.zeros(H * W, dtype=torch.bool, device=octree.device)
        is_occ = torch.zeros(H * W, dtype=torch.bool, device=octree.device)
        is_known[cell[known]] = True
        is_occ[cell[occupied]] = True
        state[is_known & (state == UNKNOWN)] = FREE
        state[is_occ] = OCCUPIED
    return Grid2D(state.view(H, W).cpu().numpy(), vs, (float(lo[0]) * vs, float(lo[1]) * vs))


def _pruned_free_boxes(octree: SparseVoxelOctree) -> torch.Tensor:
    """Voxel-index boxes (M, 2, 3) int64 [lo, hi) of the children pruned as free."""
    octree.flush_summaries()
    keys, ids = octree.table.items()
    masks = octree.node_free_mask[ids.long()].long()
    sel = masks != 0
    if not bool(sel.any()):
        return torch.zeros((0, 2, 3), dtype=torch.int64, device=octree.device)
    keys, masks = keys[sel], masks[sel]
    bits = ((masks[:, None] >> torch.arange(8, device=octree.device)) & 1).bool()
    kids = morton.children(keys)[bits]
    coords, level = morton.decode(kids)
    size = BRICK * (torch.ones_like(level) << level)
    lo = coords * size[:, None]
    return torch.stack([lo, lo + size[:, None]], dim=1)


# PGM pixel values and what map_server reads them as in trinary mode: p = (255 - pixel) / 255,
# occupied when p > occupied_thresh, free when p < free_thresh, unknown otherwise.
PGM_FREE, PGM_OCCUPIED, PGM_UNKNOWN = 254, 0, 205


def pgm_occupancy_probability(pixel: int) -> float:
    return (255 - pixel) / 255.0


def save_map_server(grid: Grid2D, pgm_path: str | Path, occupied_thresh: float = 0.65,
                    free_thresh: float = 0.196) -> Path:
    """Write a map_server pair: PGM (P5, 254 free, 0 occupied, 205 unknown; top row = max y) and a
    YAML next to it with the same stem. Returns the YAML path.

    The thresholds must read 205 back as unknown: 205 is p = 0.196, so free_thresh <= 0.196 (the
    ROS map_saver value; Nav2's default 0.25 would load every unknown cell as free)."""
    p_free, p_unknown, p_occ = (pgm_occupancy_probability(v) for v in (PGM_FREE, PGM_UNKNOWN, PGM_OCCUPIED))
    if not (p_free < free_thresh <= p_unknown <= occupied_thresh < p_occ):
        raise ValueError(f"map_server thresholds must read free / unknown / occupied pixels back as such: need "
                         f"{p_free:.4f} < free_thresh <= {p_unknown:.4f} <= occupied_thresh < 1, got free_thresh "
                         f"{free_thresh}, occupied_thresh {occupied_thresh}")
    pgm_path = Path(pgm_path)
    img = np.full(grid.data.shape, PGM_UNKNOWN, np.uint8)
    img[grid.data == FREE] = PGM_FREE
    img[grid.data == OCCUPIED] = PGM_OCCUPIED
    img = img[::-1]                                   # image rows go down, map y goes up
    with open(pgm_path, "wb") as f:
        f.write(f"P5\n# voxmap_ros occupancy\n{img.shape[1]} {img.shape[0]}\n255\n".encode())
        f.write(np.ascontiguousarray(img).tobytes())
    yaml_path = pgm_path.with_suffix(".yaml")
    yaml_path.write_text(
        f"image: {pgm_path.name}\nmode: trinary\nresolution: {grid.resolution_m}\n"
        f"origin: [{grid.origin_xy_m[0]}, {grid.origin_xy_m[1]}, 0.0]\nnegate: 0\n"
        f"occupied_thresh: {occupied_thresh}\nfree_thresh: {free_thresh}\n")
    return yaml_path


def load_pgm(path: str | Path) -> np.ndarray:
    """Read a binary PGM (P5, 8-bit) into (H, W) uint8."""
    data = Path(path).read_bytes()
    tokens, pos = [], 0
    while len(tokens) < 4:
        while data[pos:pos + 1].isspace():
            pos += 1
        if data[pos:pos + 1] == b"#":
            pos = data.index(b"\n", pos) + 1
            continue
        end = pos
        while not data[end:end + 1].isspace():
            end += 1
        tokens.append(data[pos:end])
        pos = end
    if tokens[0] != b"P5":
        raise ValueError(f"{path} is not a binary PGM (magic {tokens[0]!r})")
    w, h = int(tokens[1]), int(tokens[2])
    return np.frombuffer(data[pos + 1:pos + 1 + w * h], np.uint8).reshape(h, w)
