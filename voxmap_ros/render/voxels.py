"""The voxel set the rasterizer draws, and its construction from an octree's TSDF.

A `VoxelSet` is a list of N axis-aligned cubic cells on an integer lattice (edge `voxel_size_m`,
lattice point (0, 0, 0) at world `origin_m`). Cell n spans lattice coordinates
[coords[n], coords[n] + 2^level[n]) per axis (octree-aligned: coords are multiples of 2^level), and
carries
  values (N, 8): the field at its 8 corners, corner c = i + 2 j + 4 k at offset (i, j, k) * 2^level
                 (x fastest, the same order as morton.CHILD_OFFSETS). Inside the cell the field is
                 the trilinear interpolation of the corners.
  colors (N, 3): RGB in [0, 1], constant over the cell.
  ids    (N,) int64: what `RenderOutput.voxel_id` reports for the cell (default: 0..N-1).
Cells must not overlap (the front-to-back order relies on it).

The field is either a density (1/m, >= 0; `field="density"`, the SVRaster parametrisation) or a
signed distance in metres (`field="sdf"`, > 0 in free space) turned into density by the mapping in
voxmap_ros.render.__init__'s docstring.

`TsdfField` turns the TSDF of a SparseVoxelOctree into a pyramid of such cells once (after fusion),
and `TsdfField.voxels(camera, lod_px)` picks the cells of one view with level of detail.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..core import morton
from ..core.octree import BRICK, BRICK_VOXELS, spheres_in_frustum
from ..core.ranges import expand_ranges, range_starts

CORNER_OFFSETS = morton.CHILD_OFFSETS            # (8, 3) int64, corner c = i + 2j + 4k
MAX_LOD_LEVEL = 3                                # cells up to one brick (8 voxels) wide


def default_max_level(trunc_vox: float) -> int:
    """The coarsest level whose cells are narrower than the truncation band (2^l < trunc_vox).
    A wider cell's corners, point-sampled 2^l voxels apart, straddle the band: in front of a
    wall they read +trunc, behind it nothing observed, and the surface between them is lost
    (measured at trunc 4 voxels, every cell at one level: coverage 1.00 at levels 0-1, 0.74 at
    level 2, 0.22 at level 3)."""
    return int(min(MAX_LOD_LEVEL, max(0, math.ceil(math.log2(max(trunc_vox, 1.0))) - 1)))
ORDER_COORD_LIMIT = 1 << 18                      # lattice extent of one voxel set (Morton key range)
TAU_CULL = 1e-4                                  # cells that can add less optical depth are dropped
# Default SDF sharpness, per voxel: the logistic weight is ~1/s = voxel/16 wide, so two sub-segments
# per cell give depth to ~0.1 voxel, and the band of cells a ray crosses stays ~2 voxels thick.
DEFAULT_SHARPNESS_VOX = 16.0


@dataclass
class VoxelSet:
    """N renderable cells; see the module docstring. Tensors share one device.

    coords (N, 3) int64, level (N,) int64, values (N, 8) float32/float64, colors (N, 3) same
    float dtype, ids (N,) int64; voxel_size_m > 0; origin_m (3,) float64 CPU."""
    coords: torch.Tensor
    level: torch.Tensor
    values: torch.Tensor
    colors: torch.Tensor
    voxel_size_m: float
    origin_m: torch.Tensor = field(default_factory=lambda: torch.zeros(3, dtype=torch.float64))
    ids: torch.Tensor | None = None
    # Built by TsdfField (aligned, finite, non-overlapping): render() checks shapes, dtypes and
    # devices only, not every value.
    trusted: bool = field(default=False, repr=False, compare=False)

    def __len__(self) -> int:
        return int(self.coords.shape[0])

    @property
    def device(self) -> torch.device:
        return self.values.device

    def cell_lo_m(self) -> torch.Tensor:
        """World min corners (N, 3) in the dtype of values."""
        return (self.origin_m.to(self.device, torch.float64) + self.coords.double() * self.voxel_size_m).to(
            self.values.dtype)

    def cell_size_m(self) -> torch.Tensor:
        """World edge lengths (N,) in the dtype of values."""
        return (torch.ldexp(torch.ones_like(self.level, dtype=torch.float64), self.level) * self.voxel_size_m).to(
            self.values.dtype)

    def id_of(self, index: torch.Tensor) -> torch.Tensor:
        """Cell indices (any shape) int64, -1 = none, any device -> ids (same shape, dtype and
        device), -1 kept."""
        if self.ids is None:
            return index
        out = torch.full_like(index, -1)
        ok = index >= 0
        out[ok] = self.ids.to(index.device)[index[ok]]
        return out

    def subset(self, mask: torch.Tensor) -> "VoxelSet":
        """The cells where mask (N,) bool (or at (K,) int64 indices), on the set's device."""
        return VoxelSet(self.coords[mask], self.level[mask], self.values[mask], self.colors[mask],
                        self.voxel_size_m, self.origin_m,
                        None if self.ids is None else self.ids[mask], self.trusted)

    @staticmethod
    def cat(sets: list["VoxelSet"]) -> "VoxelSet":
        a = sets[0]
        ids = None if any(s.ids is None for s in sets) else torch.cat([s.ids for s in sets])
        return VoxelSet(torch.cat([s.coords for s in sets]), torch.cat([s.level for s in sets]),
                        torch.cat([s.values for s in sets]), torch.cat([s.colors for s in sets]),
                        a.voxel_size_m, a.origin_m, ids, all(s.trusted for s in sets))


def check_voxels(v: VoxelSet, field_kind: str) -> None:
    """Raise ValueError unless `v` is a well-formed VoxelSet for `field_kind` ("sdf" | "density")."""
    if not isinstance(v, VoxelSet):
        raise ValueError(f"voxels must be a VoxelSet, got {type(v).__name__}")
    n = v.coords.shape[0] if isinstance(v.coords, torch.Tensor) and v.coords.ndim == 2 else None
    for name, t, dtypes, shape in (("coords", v.coords, (torch.int32, torch.int64), (n, 3)),
                                   ("level", v.level, (torch.int32, torch.int64), (n,)),
                                   ("values", v.values, (torch.float32, torch.float64), (n, 8)),
                                   ("colors", v.colors, (torch.float32, torch.float64), (n, 3))):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"voxels.{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in dtypes:
            raise ValueError(f"voxels.{name} must have dtype in {[str(d) for d in dtypes]}, got {t.dtype}")
        if n is None or tuple(t.shape) != shape:
            want = "(N, 3)" if n is None else str(shape)
            raise ValueError(f"voxels.{name} must have shape {want}, got {tuple(t.shape)}")
    if v.ids is not None and (not isinstance(v.ids, torch.Tensor) or tuple(v.ids.shape) != (n,)
                              or v.ids.dtype != torch.int64):
        raise ValueError(f"voxels.ids must be None or an (N,) int64 tensor, got "
                         f"{getattr(v.ids, 'dtype', type(v.ids).__name__)} {getattr(v.ids, 'shape', '')}")
    devs = {t.device for t in (v.coords, v.level, v.values, v.colors)}
    if len(devs) != 1:
        raise ValueError(f"voxels tensors must share one device, got {sorted(map(str, devs))}")
    if v.values.dtype != v.colors.dtype:
        raise ValueError(f"voxels.values and voxels.colors must share a dtype, got {v.values.dtype}, {v.colors.dtype}")
    if not (isinstance(v.voxel_size_m, (int, float)) and math.isfinite(v.voxel_size_m) and v.voxel_size_m > 0):
        raise ValueError(f"voxels.voxel_size_m must be a finite number > 0, got {v.voxel_size_m!r}")
    o = v.origin_m
    if not isinstance(o, torch.Tensor) or tuple(o.shape) != (3,) or not bool(torch.isfinite(o.double()).all()):
        raise ValueError(f"voxels.origin_m must be a finite (3,) tensor, got {o!r}")
    if n == 0 or v.trusted:
        return
    lv = v.level
    if int(lv.min()) < 0 or int(lv.max()) > 20:
        raise ValueError(f"voxels.level must be in [0, 20], got [{int(lv.min())}, {int(lv.max())}]")
    if bool(((v.coords.long() & ((1 << lv.long()) - 1)[:, None]) != 0).any()):
        raise ValueError("voxels.coords must be multiples of 2^level (octree-aligned cells)")
    if not bool(torch.isfinite(v.values.detach()).all()):
        raise ValueError("voxels.values must be finite")
    if not bool(torch.isfinite(v.colors.detach()).all()):          # 0 * inf would poison every ray through it
        raise ValueError("voxels.colors must be finite")
    if field_kind == "density" and bool((v.values.detach() < 0).any()):
        raise ValueError("voxels.values are densities here (field='density') and must be >= 0")


def normals(v: VoxelSet, field_kind: str) -> torch.Tensor:
    """Unit normals (N, 3) (values' dtype, detached): the gradient of the trilinear field at the cell
    centre, pointing to free space (+grad for an SDF, -grad for a density); 0 where the field is flat."""
    dtype = v.values.dtype
    f = v.values.detach().double()       # in float32, the sums overflow near its max and the norm from ~1e19
    off = CORNER_OFFSETS.to(f.device)
    g = torch.stack([(f * (2 * off[:, a] - 1).to(f.dtype)).sum(1) for a in range(3)], 1)   # 4x mean diff
    if field_kind == "density":
        g = -g
    n = g.norm(dim=1, keepdim=True)
    return torch.where(n > 0, g / n.clamp_min(1e-300), torch.zeros_like(g)).to(dtype)


def order_coords(v: VoxelSet) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rel (N, 3) int64, size (N,) int64, extent (3,) int64): lattice coordinates relative to an
    aligned base, cell sizes in lattice units, and the max corner over the set. The flipped
    coordinate of a cell along axis a is extent[a] - rel[:, a] - size. Raises ValueError when
    the set spans more than ORDER_COORD_LIMIT lattice units."""
    c = v.coords.long()
    size = torch.ones_like(v.level, dtype=torch.int64) << v.level.long()
    if c.shape[0] == 0:
        return c, size, torch.zeros(3, dtype=torch.int64, device=c.device)
    top = int(v.level.max())
    base = (c.min(0).values >> top) << top
    rel = c - base
    extent = (rel + size[:, None]).max(0).values
    extent = ((extent + (1 << top) - 1) >> top) << top            # aligned, so flips keep alignment
    if int(extent.max()) > ORDER_COORD_LIMIT:
        raise ValueError(f"the voxel set spans {int(extent.max())} lattice cells along an axis; at most "
                         f"{ORDER_COORD_LIMIT} fit the front-to-back ordering keys (render a smaller region)")
    return rel, size, extent


def morton_keys(rel: torch.Tensor, size: torch.Tensor, extent: torch.Tensor, octant: int) -> torch.Tensor:
    """Front-to-back sort keys (N,) int64 for rays whose direction has sign bits `octant`
    (bit a set: d[a] < 0), from rel (N, 3), size (N,) and extent (3,) int64 as order_coords
    gives them, on one device (the keys on it): the Morton code of each cell's min corner after
    mirroring the axes the rays run down. For non-overlapping octree-aligned cells, ascending keys
    are a front-to-back order along every ray of that octant (Morton order is monotone per axis)."""
    q = rel.clone()
    for a in range(3):
        if octant >> a & 1:
            q[:, a] = extent[a] - rel[:, a] - size
    return morton.encode(q - morton.COORD_BIAS, 0)


# ------------------------------------------------------------------------------------ octree -> cells
_PAD = BRICK + 1                       # a brick's dual lattice block: its voxels + the +x/+y/+z faces


def _pad_index(device) -> tuple[torch.Tensor, torch.Tensor]:
    """For the 9^3 lattice points of a padded brick block (x fastest): which of the 8 bricks at
    offsets {0,1}^3 holds it (0..7, corner order) and its voxel index there (0..511)."""
    r = torch.arange(_PAD, device=device)
    z, y, x = torch.meshgrid(r, r, r, indexing="ij")
    p = torch.stack([x, y, z], -1).reshape(-1, 3)
    nb = (p // BRICK)
    loc = p % BRICK
    return (nb[:, 0] + 2 * nb[:, 1] + 4 * nb[:, 2]), (loc[:, 0] + BRICK * loc[:, 1] + BRICK * BRICK * loc[:, 2])


def _softplus(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.softplus(x)


def sdf_cell_tau_bound(values_m: torch.Tensor, sharpness: float) -> torch.Tensor:
    """Upper bound (N,) of the optical depth a ray can collect in a cell under the SDF mapping,
    from corner SDF values_m (N, 8) metres, any float dtype and device (the bound in the same):
    twice the drop of softplus(-s f) between the cell's largest and smallest corner (the trilinear
    field stays within its corner range; a ray can run down that range at most twice)."""
    x = (sharpness * values_m).clamp_min(-SDF_X_MIN)
    return 2.0 * (_softplus(-x.min(1).values) - _softplus(-x.max(1).values))


SDF_X_MIN = 60.0        # s * f is clamped to >= -60 (far inside), everywhere, so exp() never overflows


class TsdfField:
    """The TSDF of a SparseVoxelOctree as renderable cells, built once after fusion.

    The field lattice is the voxel centres: a level-0 cell spans the 8 voxel centres
    (x..x+1, y..y+1, z..z+1) and interpolates their SDF (tsdf * trunc_m, metres) trilinearly -- the
    same cells marching cubes uses. A level-l cell (2^l voxels wide, l <= max_level) takes its
    corners from the voxel centres 2^l apart (point sampling, exact for a linear field).
    Observed voxels have weight > min_weight. A cell with all 8 corners observed is kept; a cell
    with some unobserved corners is kept only if one of its observed corners is negative (behind a
    surface), with the unobserved corners set to -trunc_m (occluded space: the integrator leaves
    voxels more than trunc_m behind a surface untouched); any other cell is left out (zero density).
    Cells that cannot add an optical depth of TAU_CULL under the given sharpness are dropped.
    Colour: the mean of the observed corners' colours (0..1).

    Args: octree; trunc_m the truncation distance the map was fused with (metres); sharpness
    (1/m) of the SDF -> density mapping; min_weight; max_level (0..3) of the level-of-detail pyramid
    (default: default_max_level of the truncation, 1 at 4 voxels);
    dtype of values and colours."""

    def __init__(self, octree, trunc_m: float, sharpness: float, min_weight: float = 0.0,
                 max_level: int | None = None, dtype: torch.dtype = torch.float32):
        if not (trunc_m > 0 and math.isfinite(trunc_m)):
            raise ValueError(f"trunc_m must be a finite number > 0, got {trunc_m}")
        if not (sharpness > 0 and math.isfinite(sharpness)):
            raise ValueError(f"sharpness must be a finite number > 0 (1/m), got {sharpness}")
        if max_level is None:
            max_level = default_max_level(trunc_m / octree.voxel_size_m)
        if not 0 <= int(max_level) <= MAX_LOD_LEVEL:
            raise ValueError(f"max_level must be in [0, {MAX_LOD_LEVEL}], got {max_level}")
        self.octree = octree
        self.trunc_m = float(trunc_m)
        self.sharpness = float(sharpness)
        self.min_weight = float(min_weight)
        self.max_level = int(max_level)
        self.voxel_size_m = float(octree.voxel_size_m)
        self.origin_m = torch.full((3,), 0.5 * self.voxel_size_m, dtype=torch.float64)   # voxel centres
        self.dtype = dtype
        self._build()

    @classmethod
    def from_mapper(cls, mapper, sharpness: float | None = None, sharpness_vox: float = DEFAULT_SHARPNESS_VOX,
                    **kw) -> "TsdfField":
        """Field of a Mapper's map; sharpness defaults to sharpness_vox / voxel_size_m."""
        v = mapper.config.map.voxel_size_m
        trunc = mapper.config.tsdf.trunc_vox * v
        return cls(mapper.octree, trunc, sharpness if sharpness is not None else sharpness_vox / v, **kw)

    def _build(self) -> None:
        o = self.octree
        dev = o.device
        slots = o.alive_slots()
        self.brick_coord = o.brick_coord[slots].long()                    # (B, 3)
        B = slots.numel()
        which, lin = _pad_index(dev)
        nb_coords = (self.brick_coord[:, None, :] + CORNER_OFFSETS.to(dev)[None]).reshape(-1, 3)
        nb = o.lookup_bricks(nb_coords).reshape(B, 8) if B else torch.zeros((0, 8), dtype=torch.int64, device=dev)
        s = nb[:, which]                                                  # (B, 729)
        have = s >= 0
        sc = s.clamp_min(0)
        tsdf = o.attrs["tsdf"][sc, lin[None].expand(B, -1)].float()
        w = o.attrs["weight"][sc, lin[None].expand(B, -1)].float()
        col = o.attrs["color"][sc, lin[None].expand(B, -1)].float() / 255.0
        obs = have & (w > self.min_weight)
        f = tsdf * self.trunc_m
        ids = torch.where(have, s * BRICK_VOXELS + lin[None], torch.full_like(s, -1))
        self.levels: list[dict] = []
        r = torch.arange(_PAD, device=dev)
        for lv in range(self.max_level + 1):
            step = 1 << lv
            p = torch.arange(0, BRICK, step, device=dev)
            pz, py, px = torch.meshgrid(p, p, p, indexing="ij")
            pmin = torch.stack([px, py, pz], -1).reshape(-1, 3)          # (m, 3) local min corners
            corners = pmin[:, None, :] + step * CORNER_OFFSETS.to(dev)[None]   # (m, 8, 3)
            cidx = corners[..., 0] + _PAD * corners[..., 1] + _PAD * _PAD * corners[..., 2]
            fv, ob, cv = f[:, cidx], obs[:, cidx], col[:, cidx]           # (B, m, 8[, 3])
            n_obs = ob.sum(-1)
            neg = (ob & (fv < 0)).any(-1)
            keep = (n_obs == 8) | ((n_obs >= 1) & neg)
            fv = torch.where(ob, fv, torch.full_like(fv, -self.trunc_m))
            tau = sdf_cell_tau_bound(fv.reshape(-1, 8), self.sharpness).reshape(keep.shape)
            keep &= tau >= TAU_CULL
            cnt = ob.sum(-1, keepdim=True).clamp_min(1).float()
            cmean = (cv * ob[..., None]).sum(-2) / cnt
            b_idx, c_idx = keep.nonzero(as_tuple=True)
            pm = pmin[c_idx]
            min_lin = cidx[c_idx, 0]
            self.levels.append({
                "coords": self.brick_coord[b_idx] * BRICK + pm,
                "level": torch.full((b_idx.numel(),), lv, dtype=torch.int64, device=dev),
                "values": fv[b_idx, c_idx].to(self.dtype),
                "colors": cmean[b_idx, c_idx].to(self.dtype),
                "ids": ids[b_idx, min_lin],
                "brick": b_idx,
            })
        del r
        # Per level, where each brick's cells start and how many it has (cells are brick-major):
        # a view then gathers the cells of its bricks by ranges instead of masking every cell.
        self._brick_ranges = []
        for L in self.levels:
            count = torch.bincount(L["brick"], minlength=B) if B else torch.zeros(0, dtype=torch.int64, device=dev)
            self._brick_ranges.append((range_starts(count), count))

    @property
    def num_cells(self) -> int:
        return int(self.levels[0]["coords"].shape[0])

    def brick_levels(self, camera, lod_px: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(level (B,) int64, visible (B,) bool) per brick for a view: the smallest level l whose
        cells project to >= lod_px pixels at the brick's depth (capped at max_level); lod_px <= 0
        turns level of detail off. visible: the brick's bounding sphere meets the view frustum."""
        dev = self.brick_coord.device
        v = self.voxel_size_m
        centre = self.origin_m.to(dev) + (self.brick_coord.double() * BRICK + BRICK / 2) * v
        c = camera.world_to_camera(centre)
        r = math.sqrt(3) * BRICK * v / 2
        visible = spheres_in_frustum(c, r, camera.K, camera.width, camera.height, camera.near_m, camera.far_m)
        if lod_px <= 0 or self.max_level == 0:
            return torch.zeros_like(visible, dtype=torch.int64), visible
        z = (c[:, 2] - r).clamp_min(camera.near_m)                       # nearest depth of the brick
        px0 = min(float(camera.K[0, 0]), float(camera.K[1, 1])) * v / z   # level-0 cell size in pixels
        lv = torch.ceil(torch.log2((lod_px / px0).clamp_min(1e-30))).clamp(0, self.max_level).long()
        return lv, visible

    def voxels(self, camera=None, lod_px: float = 1.0) -> VoxelSet:
        """The cells to draw: without a camera all level-0 cells; with one, the cells of the bricks
        that meet its frustum, each brick at its level of detail (see brick_levels)."""
        if camera is None:
            L = self.levels[0]
            return VoxelSet(L["coords"], L["level"], L["values"], L["colors"], self.voxel_size_m,
                            self.origin_m, L["ids"], trusted=True)
        lv, vis = self.brick_levels(camera, lod_px)
        parts = []
        for li, (L, (start, count)) in enumerate(zip(self.levels, self._brick_ranges)):
            bricks = (vis & (lv == li)).nonzero().squeeze(1)      # ascending: the cells keep their order
            idx = expand_ranges(start[bricks], count[bricks])
            parts.append(VoxelSet(*(L[k].index_select(0, idx) for k in ("coords", "level", "values", "colors")),
                                  self.voxel_size_m, self.origin_m, L["ids"].index_select(0, idx), trusted=True))
        return VoxelSet.cat(parts)


def voxels_from_sdf(sdf_fn, lo_m, hi_m, voxel_size_m: float, band_m: float, color=(0.5, 0.5, 0.5),
                    dtype: torch.dtype = torch.float64, device="cpu") -> VoxelSet:
    """Level-0 cells of an analytic SDF (tests, demos): the lattice of spacing voxel_size_m from
    lo_m to hi_m (3,) metres (sequences, numpy arrays or CPU tensors; read as float64), origin at
    lo_m; sdf_fn maps points (M, 3) float64 CPU -> an (M,) tensor of metres (any float dtype,
    CPU). Keeps the cells whose corners come within band_m of the surface (or straddle it), all
    coloured `color` (3,) RGB in [0, 1]; the set is in `dtype` on `device`."""
    v = float(voxel_size_m)
    lo = torch.as_tensor(lo_m, dtype=torch.float64)
    n = torch.ceil((torch.as_tensor(hi_m, dtype=torch.float64) - lo) / v).long()
    r = [torch.arange(int(k)) for k in n]
    z, y, x = torch.meshgrid(r[2], r[1], r[0], indexing="ij")
    cell = torch.stack([x, y, z], -1).reshape(-1, 3)
    corners = cell[:, None, :] + CORNER_OFFSETS[None]
    f = sdf_fn((lo + corners.double() * v).reshape(-1, 3)).reshape(-1, 8).double()
    keep = (f.abs().min(1).values < band_m) | ((f.min(1).values < 0) & (f.max(1).values > 0))
    cell, f = cell[keep], f[keep]
    col = torch.as_tensor(color, dtype=torch.float64).expand(cell.shape[0], 3).clone()
    return VoxelSet(cell.to(device), torch.zeros(cell.shape[0], dtype=torch.int64, device=device),
                    f.to(device, dtype), col.to(device, dtype), v, lo)
