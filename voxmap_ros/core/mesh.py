"""Meshing the octree: marching cubes over bricks, incremental over the bricks that changed.

A brick's cells reach one sample into its +x, +y, +z neighbours, so every brick is meshed from a
9x9x9 block padded from those neighbours: bricks tile space without gaps (no cracks) and without
overlap. When a brick changes, it and its -x/-y/-z neighbours (whose cells read it) are re-meshed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from . import morton
from .marching_cubes import KEY_COORD_MAX, KEY_COORD_MIN, marching_cubes_blocks, weld_by_keys
from .octree import BRICK, SparseVoxelOctree
from ..types import MeshData

# The 8 neighbours (dx, dy, dz) in {0,1}^3 that a padded block reads from.
_PAD_OFFSETS = morton.CHILD_OFFSETS


def max_jump_tsdf(max_jump_vox: float, trunc_vox: float) -> float:
    """The marching-cubes limit on the spread of a cell's 8 corner values, in normalised TSDF
    units, for a limit of max_jump_vox voxels (0 = none: inf).

    Why: a true surface changes the SDF across a cell by at most the cell's diagonal (sqrt 3
    voxels), or a few times that at grazing incidence where projective distances overestimate.
    A sign change between corners much farther apart in value (a truncated +1 next to a -1, say)
    is mostly a seam between observations that disagree, such as the far end of the band behind
    a thin object meeting free space seen from another side; but a surface seen more obliquely
    than the limit allows is dropped too (measured: precision up, recall down about as much; off
    by default, docs/BENCHMARKS.md)."""
    return math.inf if max_jump_vox <= 0 else float(max_jump_vox) / float(trunc_vox)


def gather_blocks(octree: SparseVoxelOctree, slots: torch.Tensor, min_weight: float):
    """Padded blocks of bricks `slots` (B,) int64: (sdf (B, 9, 9, 9) float32 [b, z, y, x],
    valid (B, 9, 9, 9) bool, colors (B, 9, 9, 9, 3) uint8, origins_vox (B, 3) int64), slots and
    results on the map device."""
    B = slots.numel()
    dev = octree.device
    sdf = torch.ones((B, 9, 9, 9), dtype=torch.float32, device=dev)
    valid = torch.zeros((B, 9, 9, 9), dtype=torch.bool, device=dev)
    colors = torch.zeros((B, 9, 9, 9, 3), dtype=torch.uint8, device=dev)
    coords = octree.brick_coord[slots].long()
    tsdf_a = octree.attrs["tsdf"].view(-1, BRICK, BRICK, BRICK)
    w_a = octree.attrs["weight"].view(-1, BRICK, BRICK, BRICK)
    c_a = octree.attrs["color"].view(-1, BRICK, BRICK, BRICK, 3)
    for off in _PAD_OFFSETS.tolist():
        dx, dy, dz = off
        nb = slots if off == [0, 0, 0] else octree.lookup_bricks(coords + torch.tensor(off, device=dev))
        have = nb >= 0
        if not bool(have.any()):
            continue
        b, n = have.nonzero().squeeze(1), nb[have]
        # Destination range in the padded block and source range in the neighbour brick (z, y, x).
        zs = slice(8, 9) if dz else slice(0, 8)
        ys = slice(8, 9) if dy else slice(0, 8)
        xs = slice(8, 9) if dx else slice(0, 8)
        zn = slice(0, 1) if dz else slice(0, 8)
        yn = slice(0, 1) if dy else slice(0, 8)
        xn = slice(0, 1) if dx else slice(0, 8)
        sdf[b, zs, ys, xs] = tsdf_a[n][:, zn, yn, xn].float()
        valid[b, zs, ys, xs] = w_a[n][:, zn, yn, xn].float() >= max(min_weight, 1e-6)
        colors[b, zs, ys, xs] = c_a[n][:, zn, yn, xn]
    return sdf, valid, colors, coords * BRICK


@dataclass
class BrickMesh:
    """Triangle soup of some bricks: tri_vertices (T, 3, 3) float32, tri_colors (T, 3, 3) uint8,
    tri_edge_keys (T, 3) int64 (weld keys), tri_brick_keys (T,) int64 (level-0 key of the owning brick);
    all on one device (the map's)."""
    tri_vertices: torch.Tensor
    tri_colors: torch.Tensor
    tri_edge_keys: torch.Tensor
    tri_brick_keys: torch.Tensor

    @classmethod
    def empty(cls, device) -> "BrickMesh":
        return cls(torch.zeros((0, 3, 3), device=device), torch.zeros((0, 3, 3), dtype=torch.uint8, device=device),
                   torch.zeros((0, 3), dtype=torch.int64, device=device),
                   torch.zeros((0,), dtype=torch.int64, device=device))

    def select(self, mask: torch.Tensor) -> "BrickMesh":
        """The triangles where mask (T,) bool (or at (K,) int64 indices), on the mesh's device."""
        return BrickMesh(self.tri_vertices[mask], self.tri_colors[mask], self.tri_edge_keys[mask],
                         self.tri_brick_keys[mask])

    @staticmethod
    def cat(parts: list["BrickMesh"]) -> "BrickMesh":
        return BrickMesh(*(torch.cat([getattr(p, f) for p in parts]) for f in
                           ("tri_vertices", "tri_colors", "tri_edge_keys", "tri_brick_keys")))

    def to_mesh(self) -> MeshData:
        """Weld into an indexed mesh (shared vertices across brick borders)."""
        T = self.tri_vertices.shape[0]
        v = self.tri_vertices.reshape(-1, 3)
        c = self.tri_colors.reshape(-1, 3)
        k = self.tri_edge_keys.reshape(-1)
        tri = torch.arange(3 * T, device=v.device).reshape(-1, 3)
        # Each cell belongs to one brick and each brick's triangles are held once, so no triangle
        # can repeat: skipping the search for repeats halves the weld (0.50 -> 0.25 s, 2.1M triangles).
        v, tri, c = weld_by_keys(v, tri, c, k, drop_duplicate_triangles=False)[:3]
        return MeshData(v.cpu().numpy().astype(np.float32), tri.cpu().numpy().astype(np.int64),
                        c.cpu().numpy().astype(np.uint8))


@dataclass
class Blocks:
    """Padded blocks gathered from the map (see gather_blocks): a copy, so that marching cubes
    can run on it while the map goes on changing."""
    sdf: torch.Tensor
    valid: torch.Tensor
    colors: torch.Tensor
    origins_vox: torch.Tensor
    max_jump: float = math.inf        # see max_jump_tsdf


@dataclass
class CompactBricks:
    """The bricks a batch of padded blocks reads, copied as they are (for the compiled mesher,
    native.mesh_bricks_cpp): tsdf / weight (U, 512) float16, color (U, 512, 3) uint8, nb (B, 8)
    int64 rows of each meshed brick's neighbours (column dx + 2 dy + 4 dz, -1 = none), origins_vox
    (B, 3) int64, min_weight, max_jump (see max_jump_tsdf). A plain copy of whole bricks costs
    less than building 9^3 blocks."""
    tsdf: torch.Tensor
    weight: torch.Tensor
    color: torch.Tensor
    nb: torch.Tensor
    origins_vox: torch.Tensor
    min_weight: float
    max_jump: float = math.inf


def block_neighbours(octree: SparseVoxelOctree, slots: torch.Tensor) -> torch.Tensor:
    """(B, 8) int64 slots of the bricks the padded blocks of bricks `slots` (B,) int64 read,
    column dx + 2 dy + 4 dz (column 0 = the brick itself), -1 where there is none; on the map
    device."""
    coords = octree.brick_coord[slots].long()
    nb = octree.lookup_bricks((coords[:, None, :] + _PAD_OFFSETS.to(coords.device)[None]).reshape(-1, 3))
    return nb.reshape(-1, _PAD_OFFSETS.shape[0])


def inside_edge_key_range(octree: SparseVoxelOctree, slots: torch.Tensor) -> torch.Tensor:
    """(N,) bool for brick slots (N,) int64, on the map device: the brick's cells (its voxels and
    one more per axis) lie inside the range of the weld's edge keys, [-2^19, 2^19 - 1] voxels per
    axis (+-5.2 km at 1 cm, +-26 km at 5 cm). The octree reaches 4x farther; bricks beyond are not
    meshed."""
    origin = octree.brick_coord[slots].long() * BRICK
    return ((origin >= KEY_COORD_MIN) & (origin + BRICK <= KEY_COORD_MAX)).all(1)


def gather_compact(octree: SparseVoxelOctree, slots: torch.Tensor, min_weight: float,
                   nb: torch.Tensor | None = None, max_jump: float = math.inf) -> CompactBricks:
    """CompactBricks of bricks `slots` (B,) int64 (CPU octree, CPU tensors); nb: their (B, 8) int64
    block_neighbours when the caller has them already."""
    coords = octree.brick_coord[slots].long()
    nb = block_neighbours(octree, slots) if nb is None else nb
    have = nb >= 0
    uniq, inv = torch.unique(nb[have], return_inverse=True)
    rows = torch.full_like(nb, -1)
    rows[have] = inv
    a = octree.attrs
    return CompactBricks(a["tsdf"][uniq], a["weight"][uniq], a["color"][uniq], rows, coords * BRICK, min_weight,
                         max_jump)


def gather(octree: SparseVoxelOctree, slots: torch.Tensor, min_weight: float, chunk: int = 4096,
           backend: str = "torch", nb: torch.Tensor | None = None,
           max_jump: float = math.inf) -> list[Blocks | CompactBricks]:
    """Copies of what meshing bricks `slots` (B,) int64 reads, in chunks of at most `chunk` bricks:
    padded Blocks for the torch mesher, CompactBricks for backend 'cpp' (nb: (B, 8) int64
    block_neighbours of `slots` if already known); max_jump (normalised TSDF) travels with them, see
    max_jump_tsdf. slots, nb and the copies on the map device."""
    if backend == "cpp":
        return [gather_compact(octree, slots[i:i + chunk], min_weight, None if nb is None else nb[i:i + chunk],
                               max_jump) for i in range(0, slots.numel(), chunk)]
    return [Blocks(*gather_blocks(octree, slots[i:i + chunk], min_weight), max_jump=max_jump)
            for i in range(0, slots.numel(), chunk)]


def mesh_blocks(blocks: list[Blocks | CompactBricks], voxel_size_m: float, device) -> BrickMesh:
    """Marching cubes over gathered blocks -> BrickMesh (triangles tagged by brick key) on the
    blocks' device (`device` when there are no triangles)."""
    parts = []
    for b in blocks:
        if isinstance(b, CompactBricks):
            from . import native
            verts, vcol, vkeys, tri_block = native.mesh_bricks_cpp(b.tsdf, b.weight, b.color, b.nb, b.origins_vox,
                                                                   voxel_size_m, b.min_weight,
                                                                   max_jump=b.max_jump)
            if verts.shape[0]:
                parts.append(BrickMesh(verts, vcol, vkeys, morton.encode(b.origins_vox >> 3, 0)[tri_block]))
            continue
        verts, tris, vcol, vkeys, tri_block = marching_cubes_blocks(b.sdf, b.valid, b.colors, b.origins_vox,
                                                                    voxel_size_m, return_triangle_blocks=True,
                                                                    max_jump=b.max_jump)
        if tris.shape[0] == 0:
            continue
        owner = morton.encode(b.origins_vox >> 3, 0)[tri_block]          # one key per brick, then per triangle
        parts.append(BrickMesh(verts[tris].float(), vcol[tris], vkeys[tris], owner))
    return BrickMesh.cat(parts) if parts else BrickMesh.empty(device)


def mesh_bricks(octree: SparseVoxelOctree, slots: torch.Tensor, min_weight: float,
                chunk: int = 4096, backend: str = "torch", max_jump: float = math.inf,
                nb: torch.Tensor | None = None) -> BrickMesh:
    """Marching cubes over bricks `slots` (B,) int64 -> BrickMesh (triangles tagged by brick), on
    the map device; nb: their (B, 8) int64 block_neighbours if already known. One chunk's copy
    at a time."""
    parts = []
    for i in range(0, slots.numel(), chunk):
        b = gather(octree, slots[i:i + chunk], min_weight, chunk, backend,
                   nb=None if nb is None else nb[i:i + chunk], max_jump=max_jump)
        parts.append(mesh_blocks(b, octree.voxel_size_m, octree.device))
    return BrickMesh.cat(parts) if parts else BrickMesh.empty(octree.device)


def may_have_surface(octree: SparseVoxelOctree, slots: torch.Tensor, min_weight: float,
                     backend: str = "torch", nb: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) bool for bricks `slots` (B,) int64: whether marching cubes over the brick's padded block
    can produce a triangle. A cell needs all 8 corners valid (weight >= min_weight) and a sign
    change, so the block must hold a valid voxel with TSDF < 0 (the brick or one of its +x/+y/+z
    neighbours). Bricks of observed free space (most of a LiDAR map) are skipped this way.
    nb: the (B, 8) int64 block_neighbours of `slots` if already known; all on the map device."""
    if slots.numel() == 0:
        return torch.zeros(0, dtype=torch.bool, device=octree.device)
    nb = (block_neighbours(octree, slots) if nb is None else nb).reshape(-1)
    uniq, inv = torch.unique(nb[nb >= 0], return_inverse=True)
    if backend == "cpp":
        from . import native
        neg = native.bricks_negative_cpp(octree, uniq, min_weight)
    else:
        neg = ((octree.attrs["tsdf"][uniq] < 0) &
               (octree.attrs["weight"][uniq].float() >= max(min_weight, 1e-6))).any(1)
    has = torch.zeros(nb.numel(), dtype=torch.bool, device=octree.device)
    has[(nb >= 0).nonzero().squeeze(1)] = neg[inv]
    return has.view(-1, _PAD_OFFSETS.shape[0]).any(1)


def meshable(octree: SparseVoxelOctree, slots: torch.Tensor, min_weight: float,
             backend: str = "torch") -> tuple[torch.Tensor, torch.Tensor]:
    """The bricks among `slots` (B,) int64 worth meshing: inside the weld's key range
    (inside_edge_key_range) and able to hold a triangle (may_have_surface). Returns their slots
    (M,) int64 and (M, 8) int64 block_neighbours, on the map device."""
    nb = block_neighbours(octree, slots)
    keep = may_have_surface(octree, slots, min_weight, backend, nb=nb) & inside_edge_key_range(octree, slots)
    return slots[keep], nb[keep]


def affected_by(octree: SparseVoxelOctree, changed_slots: torch.Tensor) -> torch.Tensor:
    """Alive brick slots whose mesh depends on the changed bricks (N,) int64: them and their
    -x/-y/-z neighbours. (M,) int64; on the map device."""
    if changed_slots.numel() == 0:
        return changed_slots
    coords = octree.brick_coord[changed_slots].long()
    nb = (coords[:, None, :] - _PAD_OFFSETS.to(coords.device)[None]).reshape(-1, 3)
    slots = octree.lookup_bricks(nb)
    return torch.unique(slots[slots >= 0])
