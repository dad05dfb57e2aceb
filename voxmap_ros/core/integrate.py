"""RGB-D projective and LiDAR ray integration into the octree: TSDF, colour, occupancy.

This module is the pure-torch reference (runs on CPU or CUDA). kernels/ holds compiled twins of
the two heavy steps that compute exactly the same voxel sets; `voxmap_ros.core.backend` picks one.

Sign convention: TSDF > 0 in free space in front of a surface, < 0 behind it, normalised by the
truncation distance to [-1, 1]. Occupancy is log-odds (OctoMap's sensor model).

Shared semantics (both backends):
- RGB-D bricks: every valid pixel with depth d votes for the bricks holding the points at depths
  d + trunc * {-1, -1/2, 0, 1/2, 1} on its ray ("the truncation band"; more samples, at most 2
  voxels apart, for truncations beyond 4 voxels: rgbd_band_fractions); existing bricks in the view
  frustum that lie wholly in front of the observed surface are visited too, so free space clears
  old surfaces. Each voxel of a visited brick projects to its nearest pixel (or, with
  rgbd.pixel_lookup 'floor', to pixel floor(u) as Open3D's VoxelBlockGrid does); sdf = depth - z.
  Voxels with sdf < -trunc are left untouched (occluded).
- RGB-D occupancy: |sdf| <= voxel/2 is a hit, sdf > voxel a miss.
- LiDAR: rays from the sensor origin. Every voxel a ray passes through at t < range - voxel
  (exact traversal, `ray_voxels`) is free (a miss); the voxel holding the return is a hit (hits
  win over misses in one scan); each
  voxel is updated at most once per scan (OctoMap's discrete insertion). Returns beyond
  max_range clear free space up to max_range and make no hit. TSDF: samples within +-trunc of
  the return accumulate sdf = range - (voxel centre - origin) . direction, once per (ray, voxel);
  free voxels outside every band get +1, also once per (ray, voxel), so that clearing a surface
  weighs as much as observing it did (ghosts of moved objects fade as fast as they formed).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import morton
from .octree import BRICK, BRICK_SHIFT, SparseVoxelOctree, VOXEL_OFFSETS
from .ranges import range_starts, rank_in_range


# Depth images mark "no reading" as 0 (frames.depth_to_metres): with rgbd.min_range_m = 0 a 0 must
# still not be a surface at the camera, so every backend takes readings from a micrometre on.
MIN_DEPTH_READING_M = 1e-6


def logodds(p: float) -> float:
    return math.log(p / (1.0 - p))


@dataclass(frozen=True)
class FusionParams:
    """Numbers the integrators need, derived once from the config (units in names)."""
    voxel_size_m: float
    trunc_m: float
    max_weight: float
    depth_weighting: bool
    rgbd_min_m: float
    rgbd_max_m: float
    lidar_min_m: float
    lidar_max_m: float
    lidar_free_space: bool
    l_hit: float
    l_miss: float
    l_min: float
    l_max: float
    pixel_round: float = 0.5       # added before floor() when a voxel picks its pixel: 0.5 nearest, 0 floor

    @classmethod
    def from_config(cls, cfg) -> "FusionParams":
        o = cfg.occupancy
        return cls(voxel_size_m=cfg.map.voxel_size_m, trunc_m=cfg.tsdf.trunc_vox * cfg.map.voxel_size_m,
                   max_weight=cfg.tsdf.max_weight, depth_weighting=cfg.tsdf.weighting == "depth",
                   rgbd_min_m=max(cfg.rgbd.min_range_m, MIN_DEPTH_READING_M), rgbd_max_m=cfg.rgbd.max_range_m,
                   lidar_min_m=cfg.lidar.min_range_m, lidar_max_m=cfg.lidar.max_range_m,
                   lidar_free_space=cfg.lidar.free_space,
                   l_hit=logodds(o.prob_hit), l_miss=logodds(o.prob_miss),
                   l_min=logodds(o.clamp_min), l_max=logodds(o.clamp_max),
                   pixel_round=0.5 if cfg.rgbd.pixel_lookup == "nearest" else 0.0)


def rgbd_band_fractions(p: FusionParams) -> tuple[float, ...]:
    """Where a pixel's ray is sampled for the band's bricks, in units of trunc, from -1 to 1:
    -1, -1/2, 0, 1/2, 1 up to a 4-voxel truncation, more beyond it so that samples stay at most 2
    voxels apart (5 samples over a 16-voxel band would step over whole bricks)."""
    n = max(5, math.ceil(p.trunc_m / p.voxel_size_m - 1e-6) + 1)
    return tuple(-1.0 + 2.0 * j / (n - 1) for j in range(n))


def obs_weight(z_m: torch.Tensor, depth_weighting: bool) -> torch.Tensor:
    """Per-observation weight for depths z_m (any shape, float32, any device): 1, or 1/z^2 beyond
    1 m; same shape, dtype and device."""
    if not depth_weighting:
        return torch.ones_like(z_m)
    return 1.0 / z_m.clamp_min(1.0).square()


# ---------------------------------------------------------------------------------- RGB-D
def rgbd_band_brick_coords(depth_m: torch.Tensor, K: torch.Tensor, T_W_C: torch.Tensor,
                           p: FusionParams) -> torch.Tensor:
    """Unique brick coordinates (M, 3) int64 of the truncation band of a depth image.

    depth_m (H, W) float32 metres (0/NaN = no reading), K (3, 3) float64, T_W_C (4, 4) float64,
    all on one device.
    """
    H, W = depth_m.shape
    valid = torch.isfinite(depth_m) & (depth_m >= p.rgbd_min_m) & (depth_m <= p.rgbd_max_m)
    v, u = valid.nonzero(as_tuple=True)
    d = depth_m[v, u]
    x = (u.float() - float(K[0, 2])) / float(K[0, 0])
    y = (v.float() - float(K[1, 2])) / float(K[1, 1])
    steps = torch.tensor(rgbd_band_fractions(p), dtype=torch.float32, device=depth_m.device) * p.trunc_m
    z = (d[:, None] + steps[None]).clamp_min(1e-3)                      # (N, S)
    pts = torch.stack([x[:, None] * z, y[:, None] * z, z], dim=-1).reshape(-1, 3)
    R, t = T_W_C[:3, :3].float(), T_W_C[:3, 3].float()
    pw = pts @ R.T + t
    return unique_coords(torch.floor(pw / (p.voxel_size_m * BRICK)).long())


def _span_error() -> ValueError:
    return ValueError(f"one frame's voxels span more than {morton.COORD_MAX - morton.COORD_MIN + 1} voxels per "
                      "axis: the voxel size is too small for the sensor range")


def unique_coords(coords: torch.Tensor, return_inverse: bool = False):
    """torch.unique(coords, dim=0) for (N, 3) int64 coordinates on any device, through 1-D Morton
    keys (much faster than a row-wise unique): (M, 3) int64 [, inverse (N,) int64] on that device.
    Results are in Morton order of coords, or of coords - their per-axis minimum when coords lie
    outside the keys' range (LiDAR voxel coordinates far from the origin: keys would wrap around);
    ValueError when even their spread does not fit."""
    base = None
    if coords.numel() and (int(coords.min()) < morton.COORD_MIN or int(coords.max()) > morton.COORD_MAX):
        base = coords.min(dim=0).values
        coords = coords - base + morton.COORD_MIN
        if int(coords.max()) > morton.COORD_MAX:
            raise _span_error()
    keys = morton.encode(coords)
    if return_inverse:
        u, inv = torch.unique(keys, return_inverse=True)
    else:
        u, inv = torch.unique(keys), None
    out = morton.decode(u)[0]
    if base is not None:
        out = out + base - morton.COORD_MIN
    return (out, inv) if return_inverse else out


def rgbd_clearing_slots(octree: SparseVoxelOctree, depth_m: torch.Tensor, K: torch.Tensor,
                        T_W_C: torch.Tensor, p: FusionParams) -> torch.Tensor:
    """Existing brick slots (M,) int64 wholly in front of the observed surface at their centre pixel.
    depth_m (H, W) float32 metres, K (3, 3) and T_W_C (4, 4) float64, on the map device."""
    slots = octree.alive_slots()
    if slots.numel() == 0:
        return slots
    H, W = depth_m.shape
    c_w = (octree.brick_coord[slots].float() + 0.5) * octree.brick_size_m
    R, t = T_W_C[:3, :3].float(), T_W_C[:3, 3].float()
    c = (c_w - t) @ R
    z = c[:, 2]
    zc = z.clamp_min(1e-6)
    u = torch.floor(float(K[0, 0]) * c[:, 0] / zc + float(K[0, 2]) + p.pixel_round).long()
    v = torch.floor(float(K[1, 1]) * c[:, 1] / zc + float(K[1, 2]) + p.pixel_round).long()
    radius = math.sqrt(3.0) * 0.5 * octree.brick_size_m
    ok = (z > p.rgbd_min_m) & (u >= 0) & (u < W) & (v >= 0) & (v < H)
    d = torch.zeros_like(z)
    d[ok] = depth_m[v[ok], u[ok]]
    ok &= torch.isfinite(d) & (d >= p.rgbd_min_m) & (d <= p.rgbd_max_m) & (d > z + radius)
    return slots[ok]


def rgbd_update_bricks(octree: SparseVoxelOctree, slots: torch.Tensor, depth_m: torch.Tensor,
                       rgb: torch.Tensor | None, K: torch.Tensor, T_W_C: torch.Tensor, p: FusionParams,
                       chunk: int = 2048) -> None:
    """Projective TSDF / colour / occupancy update of the voxels of bricks `slots` (M,) int64.

    depth_m (H, W) float32; rgb (H, W, 3) uint8 or None; K (3, 3) and T_W_C (4, 4) float64; all
    on the map device.
    """
    H, W = depth_m.shape
    R, t = T_W_C[:3, :3].float(), T_W_C[:3, 3].float()
    fx, fy, cx, cy = (float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]))
    tsdf_a, w_a, col_a, occ_a = (octree.attrs[n] for n in ("tsdf", "weight", "color", "occ"))
    half_vox = 0.5 * p.voxel_size_m
    offs = VOXEL_OFFSETS.to(slots.device).float()
    for i in range(0, slots.numel(), chunk):
        s = slots[i:i + chunk]
        base = octree.brick_coord[s].float() * BRICK
        pw = (base[:, None, :] + offs[None] + 0.5) * p.voxel_size_m            # (B, 512, 3)
        pc = (pw - t) @ R
        z = pc[..., 2]
        zc = torch.where(z > 1e-6, z, torch.ones_like(z))
        u = torch.floor(fx * pc[..., 0] / zc + cx + p.pixel_round).long()
        v = torch.floor(fy * pc[..., 1] / zc + cy + p.pixel_round).long()
        inside = (z > 1e-6) & (u >= 0) & (u < W) & (v >= 0) & (v < H)
        d = torch.zeros_like(z)
        d[inside] = depth_m[v[inside], u[inside]]
        ok = inside & torch.isfinite(d) & (d >= p.rgbd_min_m) & (d <= p.rgbd_max_m)
        sdf = d - z
        ok &= sdf >= -p.trunc_m
        if not bool(ok.any()):
            continue
        obs = (sdf / p.trunc_m).clamp(-1.0, 1.0)
        w_obs = obs_weight(d, p.depth_weighting)
        w_old = w_a[s].float()
        t_old = tsdf_a[s].float()
        w_sum = w_old + w_obs
        t_new = (t_old * w_old + obs * w_obs) / w_sum
        tsdf_a[s] = torch.where(ok, t_new, t_old).to(tsdf_a.dtype)
        w_a[s] = torch.where(ok, w_sum.clamp_max(p.max_weight), w_old).to(w_a.dtype)
        if rgb is not None:
            near = ok & (sdf.abs() < p.trunc_m)
            c_obs = torch.zeros(pw.shape, dtype=torch.float32, device=pw.device)
            c_obs[inside] = rgb[v[inside], u[inside]].float()
            c_old = col_a[s].float()
            c_new = (c_old * w_old[..., None] + c_obs * w_obs[..., None]) / w_sum[..., None]
            col_a[s] = torch.where(near[..., None], torch.floor(c_new + 0.5), c_old).clamp(0, 255).to(torch.uint8)
        delta = torch.where(sdf.abs() <= half_vox, torch.full_like(sdf, p.l_hit),
                            torch.where(sdf > p.voxel_size_m, torch.full_like(sdf, p.l_miss), torch.zeros_like(sdf)))
        delta = torch.where(ok, delta, torch.zeros_like(delta))
        o_old = occ_a[s].float()
        o_new = torch.where(delta != 0, (o_old + delta).clamp(p.l_min, p.l_max), o_old)
        occ_a[s] = o_new.to(occ_a.dtype)


def integrate_rgbd_torch(octree: SparseVoxelOctree, depth_m: torch.Tensor, rgb: torch.Tensor | None,
                        K: torch.Tensor, T_W_C: torch.Tensor, p: FusionParams,
                        update_bricks=None) -> torch.Tensor:
    """Integrate one RGB-D frame (shapes as in rgbd_update_bricks, on the map device).
    `update_bricks` replaces rgbd_update_bricks (same signature), e.g. by its Triton twin.
    Returns the visited brick slots (M,) int64."""
    band = rgbd_band_brick_coords(depth_m, K, T_W_C, p)
    clearing = rgbd_clearing_slots(octree, depth_m, K, T_W_C, p)
    slots, _ = octree.allocate_bricks(band)
    slots = torch.unique(torch.cat([slots, clearing]))
    (update_bricks or rgbd_update_bricks)(octree, slots, depth_m, rgb, K, T_W_C, p)
    return slots


# ---------------------------------------------------------------------------------- LiDAR
def lidar_rays(points: torch.Tensor, T_W_L: torch.Tensor, p: FusionParams):
    """Rays of a scan: (origin (3,) f32, dirs (N, 3) f32, ranges (N,) f32 clipped to max range,
    hit (N,) bool). points (N, 3) float32 sensor frame, T_W_L (4, 4) float64, on one device (the
    results on it); non-finite and too-close points dropped."""
    r = points.norm(dim=1)
    keep = torch.isfinite(points).all(1) & (r >= p.lidar_min_m) & (r > 0)
    pts, r = points[keep], r[keep]
    n = pts / r[:, None]
    huge = torch.isinf(r)         # finite coordinates whose norm overflows float32 (> 1.8e19 m): a "no return" marker
    if bool(huge.any()):
        scaled = pts[huge] / pts[huge].abs().amax(1, keepdim=True)
        n[huge] = scaled / scaled.norm(dim=1, keepdim=True)
    R, t = T_W_L[:3, :3].float(), T_W_L[:3, 3].float()
    # Row k of R, term by term in the compiled kernel's order (a matmul's summation order differs in the last bit).
    dirs = (n[:, 0:1] * R[:, 0] + n[:, 1:2] * R[:, 1]) + n[:, 2:3] * R[:, 2]
    hit = r <= p.lidar_max_m
    return t, dirs, torch.where(hit, r, torch.full_like(r, p.lidar_max_m)), hit


def check_lidar_extent(points: torch.Tensor, T_W_L: torch.Tensor, p: FusionParams, span_limit: bool) -> None:
    """ValueError when a scan would be refused by the LiDAR integration for its extent: a brick
    of a ray (origin to end, clipped to max range, plus the truncation band; one brick of margin)
    outside the key range, or, with span_limit (the torch path's unique_coords), voxels spanning
    more than the keys' range per axis. points (N, 3) float32 sensor frame, T_W_L (4, 4) float64,
    on the map device. The integration refuses such scans itself, before it writes; Mapper calls
    this first for a frame that also carries depth, so that its RGB-D part is not fused either."""
    origin, dirs, ranges, _hit = lidar_rays(points, T_W_L, p)
    if dirs.shape[0] == 0:
        return
    ends = torch.cat([origin[None].double(), origin.double() + dirs.double() * (ranges.double() + p.trunc_m)[:, None]])
    brick_m = p.voxel_size_m * BRICK
    lo, hi = torch.floor(ends.min(0).values / brick_m) - 1, torch.floor(ends.max(0).values / brick_m) + 1
    if float(lo.min()) < morton.COORD_MIN or float(hi.max()) > morton.COORD_MAX:
        raise ValueError(f"LiDAR scan reaches bricks {lo.tolist()} .. {hi.tolist()}, outside the key range "
                         f"[{morton.COORD_MIN}, {morton.COORD_MAX}] (the map is too large for the voxel size)")
    span_vox = float(((ends.max(0).values - ends.min(0).values) / p.voxel_size_m).max()) + 2
    if span_limit and span_vox > morton.COORD_MAX - morton.COORD_MIN:
        raise _span_error()


def ray_voxels(origin: torch.Tensor, dirs: torch.Tensor, t_end: torch.Tensor, voxel_size_m: float):
    """Every voxel that the segments origin + t * dirs, t in [0, t_end), pass through (exact
    traversal): from the voxel of the origin, the segment crosses voxel boundaries at computed
    times; taken in order of t (ties: x, then y, then z), each crossing steps one axis by one
    voxel, ending in the voxel of the end point. origin (3,) float32, dirs (R, 3) float32 unit,
    t_end (R,) float32 metres (<= 0: no voxel), all on one device. Returns (ray (F,) int64, voxel
    (F, 3) int64) on it, grouped by ray in order along it; float32 arithmetic for the crossing times."""
    dev = dirs.device
    vs = voxel_size_m
    live = t_end > 0
    rid = live.nonzero().squeeze(1)
    d, te = dirs[rid], t_end[rid]
    i0 = torch.floor(origin / vs).long()                                    # (3,) start voxel
    i1 = torch.floor((origin + te[:, None] * d) / vs).long()                # (L, 3) end voxel
    n_ax = (i1 - i0).abs()                                                  # crossings per axis
    # Boundary crossing times, axis by axis: plane k (1..n) beyond the start voxel.
    ts, rs, axes = [], [], []
    for a in range(3):
        n = n_ax[:, a]
        r = torch.repeat_interleave(torch.arange(rid.numel(), device=dev), n)
        k = rank_in_range(n) + 1
        da = d[r, a]
        plane = torch.where(da > 0, i0[a] + k, i0[a] - k + 1).float() * vs
        ts.append((plane - origin[a]) / da)
        rs.append(r)
        axes.append(torch.full_like(r, a))
    t, r, axis = torch.cat(ts), torch.cat(rs), torch.cat(axes)
    order = torch.sort(t, stable=True).indices                              # ties keep x, y, z order
    order = order[torch.sort(r[order], stable=True).indices]                # by ray, then by t
    r, axis = r[order], axis[order]
    # Step vectors of the crossings, (C, 3): +-1 on the crossed axis.
    step = torch.zeros((r.numel(), 3), dtype=torch.int64, device=dev)
    step[torch.arange(r.numel(), device=dev), axis] = torch.where(d[r, axis] > 0, 1, -1)
    m = n_ax.sum(1)                                                         # crossings per ray
    cnt = m + 1                                                             # voxels per ray
    seg_r = torch.repeat_interleave(torch.arange(rid.numel(), device=dev), cnt)
    j = rank_in_range(cnt)
    # Voxel j of a ray = start + the steps of its first j crossings: a running sum of the steps
    # with a zero row before each ray's crossings.
    steps = torch.zeros((seg_r.numel(), 3), dtype=torch.int64, device=dev)
    steps[(j > 0).nonzero().squeeze(1)] = step
    run = torch.cumsum(steps, 0)
    ray_start = range_starts(cnt)[seg_r]
    vox = i0 + run - run[ray_start]
    return rid[seg_r], vox


def lidar_samples(origin: torch.Tensor, dirs: torch.Tensor, ranges: torch.Tensor, hit: torch.Tensor,
                  p: FusionParams, ray_ids: torch.Tensor, with_free_rays: bool = False):
    """Voxel indices touched by a chunk of R rays, as flat tensors (all float32 arithmetic):
    free voxels (F, 3) int64; band (ray_id (B,), voxel (B, 3) int64, sdf (B,) f32); hit voxels (Hn, 3).
    With `with_free_rays`, free is (ray_id (F,) int64, voxel (F, 3) int64). origin (3,), dirs
    (R, 3) unit and ranges (R,) float32 as lidar_rays gives them, hit (R,) bool, ray_ids (R,) int64,
    all on one device (the results on it)."""
    vs = p.voxel_size_m
    step = 0.5 * vs
    dev = dirs.device
    # Free space: every voxel on [0, range - voxel) (or [0, max range) for no-return rays).
    t_end = torch.where(hit, ranges - vs, ranges)
    free = torch.zeros((0, 3), dtype=torch.int64, device=dev)
    ray = torch.zeros(0, dtype=torch.int64, device=dev)
    if p.lidar_free_space:
        ray, free = ray_voxels(origin, dirs, t_end, vs)
    # Band samples t = range - trunc + j * step, j = 0 .. 2*trunc/step.
    nb = int(math.floor(2 * p.trunc_m / step + 1e-6)) + 1
    hr = hit.nonzero().squeeze(1)
    tj = (ranges[hr, None] - p.trunc_m) + torch.arange(nb, device=dev, dtype=torch.float32)[None] * step
    vox = torch.floor((origin + tj[..., None] * dirs[hr, None, :]) / vs).long()      # (Hr, nb, 3)
    centre = (vox.float() + 0.5) * vs
    sdf = ranges[hr, None] - ((centre - origin) * dirs[hr, None, :]).sum(-1)
    band_ray = ray_ids[hr, None].expand(-1, nb)
    ok = tj > 0
    hits = torch.floor((origin + ranges[hr, None] * dirs[hr]) / vs).long()
    if with_free_rays:
        free = (ray_ids[ray], free)
    return free, (band_ray[ok], vox[ok], sdf[ok]), hits


def integrate_lidar_torch(octree: SparseVoxelOctree, points: torch.Tensor, T_W_L: torch.Tensor,
                          p: FusionParams, chunk_rays: int = 4096) -> torch.Tensor:
    """Integrate one scan. points (N, 3) float32 sensor frame, T_W_L (4, 4) float64, on the map
    device. Returns touched brick slots (M,) int64."""
    origin, dirs, ranges, hit = lidar_rays(points, T_W_L, p)
    dev = octree.device
    ids = torch.arange(dirs.shape[0], device=dev)
    frees, bands, hits = [], [], []
    for i in range(0, dirs.shape[0], chunk_rays):
        sl = slice(i, i + chunk_rays)
        f, b, h = lidar_samples(origin, dirs[sl], ranges[sl], hit[sl], p, ids[sl], with_free_rays=True)
        frees.append(f); bands.append(b); hits.append(h)
    free_ray = torch.cat([f[0] for f in frees]) if frees else torch.zeros(0, dtype=torch.int64, device=dev)
    free = torch.cat([f[1] for f in frees]) if frees else torch.zeros((0, 3), dtype=torch.int64, device=dev)
    band_ray = torch.cat([b[0] for b in bands]) if bands else torch.zeros(0, dtype=torch.int64, device=dev)
    band_vox = torch.cat([b[1] for b in bands]) if bands else torch.zeros((0, 3), dtype=torch.int64, device=dev)
    band_sdf = torch.cat([b[2] for b in bands]) if bands else torch.zeros(0, device=dev)
    hitv = torch.cat(hits) if hits else torch.zeros((0, 3), dtype=torch.int64, device=dev)
    keep = band_sdf >= -p.trunc_m
    band_ray, band_vox, band_sdf = band_ray[keep], band_vox[keep], band_sdf[keep]

    all_vox = torch.cat([free, band_vox, hitv])
    if all_vox.numel() == 0:
        return torch.zeros(0, dtype=torch.int64, device=dev)
    uniq_vox, inv = unique_coords(all_vox, return_inverse=True)
    nf, nb_ = free.shape[0], band_vox.shape[0]
    inv_free, inv_band, inv_hit = inv[:nf], inv[nf:nf + nb_], inv[nf + nb_:]
    n = uniq_vox.shape[0]
    is_hit = torch.zeros(n, dtype=torch.bool, device=dev)
    is_hit[inv_hit] = True
    is_free = torch.zeros(n, dtype=torch.bool, device=dev)
    is_free[inv_free] = True
    in_band = torch.zeros(n, dtype=torch.bool, device=dev)
    in_band[inv_band] = True
    # One contribution per (ray, voxel) in the band. Pairs as 1-D keys ray * n + voxel: the same
    # order as a row-wise unique of (ray, voxel), much faster.
    pair_keys, pair_inv = torch.unique(band_ray * n + inv_band, return_inverse=True)
    pair_first = torch.full((pair_keys.shape[0],), band_ray.numel(), dtype=torch.int64, device=dev)
    pair_first.scatter_reduce_(0, pair_inv, torch.arange(band_ray.numel(), device=dev), reduce="amin")
    bsdf = band_sdf[pair_first]
    bidx = pair_keys % n
    obs = (bsdf / p.trunc_m).clamp(-1.0, 1.0)
    w_obs = torch.ones_like(obs)          # LiDAR noise barely grows with range: constant weight
    sum_w = torch.zeros(n, device=dev).index_add_(0, bidx, w_obs)
    sum_wt = torch.zeros(n, device=dev).index_add_(0, bidx, w_obs * obs)
    # Free voxels outside every band: +1 once per (ray, voxel), weighted like band observations.
    free_only = is_free & ~in_band
    if bool(free_only.any()):
        free_pairs = torch.unique(free_ray * n + inv_free)
        n_rays = torch.zeros(n, device=dev).index_add_(0, free_pairs % n, torch.ones(free_pairs.numel(), device=dev))
        sum_w[free_only] = n_rays[free_only]
        sum_wt[free_only] = n_rays[free_only]

    bricks = uniq_vox >> BRICK_SHIFT
    slots, _ = octree.allocate_bricks(bricks)
    local = uniq_vox & (BRICK - 1)
    lin = local[:, 0] + BRICK * local[:, 1] + BRICK * BRICK * local[:, 2]
    tsdf_a, w_a, occ_a = octree.attrs["tsdf"], octree.attrs["weight"], octree.attrs["occ"]
    upd = sum_w > 0
    s_u, l_u = slots[upd], lin[upd]
    w_old = w_a[s_u, l_u].float()
    t_old = tsdf_a[s_u, l_u].float()
    w_new = w_old + sum_w[upd]
    tsdf_a[s_u, l_u] = ((t_old * w_old + sum_wt[upd]) / w_new).to(tsdf_a.dtype)
    w_a[s_u, l_u] = w_new.clamp_max(p.max_weight).to(w_a.dtype)
    delta = torch.where(is_hit, torch.full((n,), p.l_hit, device=dev),
                        torch.where(is_free, torch.full((n,), p.l_miss, device=dev), torch.zeros(n, device=dev)))
    chg = delta != 0
    o_old = occ_a[slots[chg], lin[chg]].float()
    occ_a[slots[chg], lin[chg]] = (o_old + delta[chg]).clamp(p.l_min, p.l_max).to(occ_a.dtype)
    return torch.unique(slots)
