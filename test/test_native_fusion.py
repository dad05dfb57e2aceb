"""The compiled fusion kernels (voxmap_ros.core.native) against the torch reference (integrate.py).

Two octrees take the same frames, one through integrate_*_torch, one through integrate_*_cpp; then
the allocated bricks must be the same set at the same slots, and every voxel value the same up to
float rounding. The inputs are small synthetic scenes built here (a tilted plane and a box seen by
a pinhole camera; a room of planes seen by a spherical LiDAR), with invalid readings of every kind.
"""
from __future__ import annotations

import math
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from voxmap_ros.config import VoxmapConfig
from voxmap_ros.core import integrate, native
from voxmap_ros.core.octree import SparseVoxelOctree, brick_summaries_torch

pytestmark = pytest.mark.skipif(not native.available(), reason=f"compiled kernels unavailable: "
                                f"{native.unavailable_reason()}")

REPO = Path(__file__).resolve().parents[1]
_CPU_FLAGS = Path("/proc/cpuinfo").read_text(errors="replace") if Path("/proc/cpuinfo").is_file() else ""

# Tolerances. The kernels evaluate every expression in the reference's float32 order, so results are
# normally bit-identical; these bounds allow for a different BLAS summation order in torch's matmul
# on other machines, which can move a voxel centre across a pixel boundary (or a sample across a
# voxel boundary) and so change a few voxels.
TSDF_TOL = 2.0 ** -10                 # one float16 ulp at 1.0 (TSDF is normalised to [-1, 1])
WEIGHT_REL_TOL = 2.0 ** -10           # one float16 ulp, relative
OCC_TOL_LOGODDS = 2.0 ** -9           # float16 ulp of log-odds around 2..4
COLOR_TOL = 1                         # uint8 levels
MAX_DIFF_FRACTION = 1e-3              # share of observed voxels allowed to differ beyond the above

IMG_W, IMG_H = 96, 72
K_SMALL = np.array([[80.0, 0.0, 47.5], [0.0, 80.0, 35.5], [0.0, 0.0, 1.0]])


# ------------------------------------------------------------------------------------ scenes
def look_at(eye, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """T_W_C (4, 4) float64 of an optical-frame camera (x right, y down, z forward) at `eye`."""
    eye, target, up = (np.asarray(v, dtype=np.float64) for v in (eye, target, up))
    z = target - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, up)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    T = np.eye(4)
    T[:3, :3] = np.stack([x, y, z], axis=1)
    T[:3, 3] = eye
    return T


def ray_scene(origin: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """Distance along unit rays dirs (N, 3) from origin (3,) to the first surface of the test scene:
    a tilted plane z = 0.15 x + 0.1 y and a box [0.3, 0.7] x [-0.2, 0.25] x [0, 0.35]; inf if none."""
    n = np.array([-0.15, -0.1, 1.0])
    denom = dirs @ n
    with np.errstate(divide="ignore", invalid="ignore"):
        t_plane = -(origin @ n) / denom
    t_plane = np.where((t_plane > 0) & np.isfinite(t_plane), t_plane, np.inf)
    lo, hi = np.array([0.3, -0.2, 0.0]), np.array([0.7, 0.25, 0.35])
    with np.errstate(divide="ignore", invalid="ignore"):
        t1, t2 = (lo - origin) / dirs, (hi - origin) / dirs
    tmin = np.nanmax(np.minimum(t1, t2), axis=1)
    tmax = np.nanmin(np.maximum(t1, t2), axis=1)
    t_box = np.where((tmax >= tmin) & (tmin > 0), tmin, np.inf)
    return np.minimum(t_plane, t_box)


def render_depth(T_W_C: np.ndarray, rng: np.random.Generator):
    """Depth (H, W) float32 metres and rgb (H, W, 3) uint8 of the test scene, with holes (0),
    NaNs, readings beyond the depth range and a little noise."""
    u, v = np.meshgrid(np.arange(IMG_W), np.arange(IMG_H))
    rays_c = np.stack([(u - K_SMALL[0, 2]) / K_SMALL[0, 0], (v - K_SMALL[1, 2]) / K_SMALL[1, 1],
                       np.ones_like(u, dtype=np.float64)], -1).reshape(-1, 3)
    norm = np.linalg.norm(rays_c, axis=1)
    dirs_w = (rays_c / norm[:, None]) @ T_W_C[:3, :3].T
    t = ray_scene(T_W_C[:3, 3], dirs_w)
    depth = (t / norm).reshape(IMG_H, IMG_W)                      # z = t * (ray . optical axis)
    depth = depth * (1.0 + 0.002 * rng.standard_normal(depth.shape))
    depth[~np.isfinite(depth)] = 0.0
    k = depth.size
    flat = depth.reshape(-1)
    flat[rng.choice(k, k // 50, replace=False)] = 0.0
    flat[rng.choice(k, k // 100, replace=False)] = np.nan
    flat[rng.choice(k, k // 100, replace=False)] = 7.5            # beyond rgbd max range
    flat[rng.choice(k, k // 200, replace=False)] = 0.05           # closer than the min range
    rgb = np.stack([(u * 5) % 256, (v * 7) % 256, (u + v) % 256], -1).astype(np.uint8)
    return torch.from_numpy(depth.astype(np.float32)), torch.from_numpy(np.ascontiguousarray(rgb))


def camera_poses(n: int, rng: np.random.Generator) -> list[np.ndarray]:
    poses = []
    for i in range(n):
        a = 2 * math.pi * i / n + 0.3 * rng.standard_normal()
        r = 1.1 + 0.4 * rng.random()
        eye = (0.5 + r * math.cos(a), r * math.sin(a), 0.6 + 0.5 * rng.random())
        target = (0.5 + 0.2 * rng.standard_normal(), 0.1 * rng.standard_normal(), 0.1)
        poses.append(look_at(eye, target))
    return poses


def lidar_scan(T_W_L: np.ndarray, rng: np.random.Generator, n_az: int = 90, n_el: int = 16):
    """Points (N, 3) float32 in the sensor frame of a spinning LiDAR in a 6 x 5 x 3 m room without a
    ceiling (the upward rays return nothing and are sent beyond max range), with NaN, too-close
    and out-of-range points mixed in."""
    az = np.linspace(-math.pi, math.pi, n_az, endpoint=False) + 0.01 * rng.standard_normal(n_az)
    el = np.radians(np.linspace(-30.0, 25.0, n_el))
    A, E = np.meshgrid(az, el)
    d_l = np.stack([np.cos(E) * np.cos(A), np.cos(E) * np.sin(A), np.sin(E)], -1).reshape(-1, 3)
    R, o = T_W_L[:3, :3], T_W_L[:3, 3]
    d_w = d_l @ R.T
    lo, hi = np.array([-3.0, -2.0, 0.0]), np.array([3.0, 3.0, 1e9])
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(d_w > 0, (hi - o) / d_w, np.where(d_w < 0, (lo - o) / d_w, np.inf))
    r = t.min(1)
    r = np.where(np.isfinite(r) & (r < 1e6), r, 100.0)             # no return: far beyond max range
    r = r + 0.01 * rng.standard_normal(r.shape)
    pts = d_l * r[:, None]
    m = len(pts)
    pts[rng.choice(m, m // 40, replace=False)] = np.nan
    close = rng.choice(m, m // 40, replace=False)
    pts[close] = d_l[close] * 0.2                                  # closer than lidar min range
    return torch.from_numpy(pts.astype(np.float32))


def lidar_poses(n: int, rng: np.random.Generator) -> list[np.ndarray]:
    poses = []
    for _ in range(n):
        yaw, tilt = rng.uniform(-math.pi, math.pi), 0.1 * rng.standard_normal()
        cy, sy, ct, st = math.cos(yaw), math.sin(yaw), math.cos(tilt), math.sin(tilt)
        T = np.eye(4)
        T[:3, :3] = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]]) @ np.array([[1, 0, 0], [0, ct, -st], [0, st, ct]])
        T[:3, 3] = (rng.uniform(-1.5, 1.5), rng.uniform(-1.0, 2.0), rng.uniform(0.3, 1.5))
        poses.append(T)
    return poses


# ------------------------------------------------------------------------------------ helpers
def fusion_params(voxel: float, **over) -> integrate.FusionParams:
    cfg = VoxmapConfig()
    cfg.map.voxel_size_m = voxel
    cfg.rgbd.min_range_m, cfg.rgbd.max_range_m = 0.1, 5.0
    cfg.lidar.min_range_m, cfg.lidar.max_range_m = 0.5, 8.0
    return replace(integrate.FusionParams.from_config(cfg), **over)


def assert_maps_match(a: SparseVoxelOctree, b: SparseVoxelOctree) -> None:
    assert torch.equal(a.brick_alive, b.brick_alive), "different brick slots allocated"
    alive = a.brick_alive
    assert torch.equal(a.brick_coord[alive], b.brick_coord[alive]), "different brick coordinates"
    observed = (a.attrs["weight"][alive] > 0) | (a.attrs["occ"][alive] != 0)
    n_obs = max(int(observed.sum()), 1)
    checks = {
        "tsdf": lambda x, y: (x - y).abs() > TSDF_TOL,
        "weight": lambda x, y: (x - y).abs() > WEIGHT_REL_TOL * torch.maximum(x.abs(), y.abs()),
        "occ": lambda x, y: (x - y).abs() > OCC_TOL_LOGODDS,
        "color": lambda x, y: ((x - y).abs() > COLOR_TOL).any(-1),
    }
    for name, bad_fn in checks.items():
        x, y = a.attrs[name][alive].float(), b.attrs[name][alive].float()
        bad = bad_fn(x, y)
        frac = int(bad.sum()) / n_obs
        assert frac <= MAX_DIFF_FRACTION, f"{name}: {int(bad.sum())} of {n_obs} observed voxels differ"


def assert_kernel_summaries_fresh(oc: SparseVoxelOctree) -> None:
    """The kernels wrote each changed brick's own summary as they updated it: every brick's node
    holds the summary of its final voxels, as a separate pass computes it."""
    slots = oc.alive_slots()
    nodes = oc.brick_node[slots].long()
    for got, want in zip((oc.node_max_occ[nodes], oc.node_min_abs_tsdf[nodes], oc.node_observed[nodes]),
                         brick_summaries_torch(oc, slots)):
        assert torch.equal(got, want)


# ------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("depth_weighting,threads,pixel_round", [(False, 1, 0.5), (True, 2, 0.0)])
def test_rgbd_matches_torch(depth_weighting, threads, pixel_round, kernel_threads):
    kernel_threads(threads)
    rng = np.random.default_rng(1)
    p = fusion_params(0.02, depth_weighting=depth_weighting, pixel_round=pixel_round)   # 0.0: floor(u)
    K = torch.from_numpy(K_SMALL)
    a = SparseVoxelOctree(0.02, initial_bricks=16)      # tiny pools: they grow inside the calls
    b = SparseVoxelOctree(0.02, initial_bricks=16)
    for i, T in enumerate(camera_poses(6, rng)):
        depth, rgb = render_depth(T, rng)
        if i == 3:
            rgb = None                                    # depth-only frame: colour untouched
        Tt = torch.from_numpy(T)
        sa = integrate.integrate_rgbd_torch(a, depth, rgb, K, Tt, p)
        sb = native.integrate_rgbd_cpp(b, depth, rgb, K, Tt, p)
        assert sb.dtype == torch.int64 and torch.equal(sa, sb), f"frame {i}: visited slots differ"
    assert a.num_bricks > 50
    assert (a.attrs["weight"][a.brick_alive] > 0).sum() > 10_000
    assert_maps_match(a, b)
    assert_kernel_summaries_fresh(b)


@pytest.mark.parametrize("threads", [1, 2])
def test_rgbd_clearing_matches_torch_in_a_map_all_around_the_camera(threads, kernel_threads):
    # The kernel projects only the bricks in the depth slab ahead of the camera; bricks behind it,
    # beyond the depth range, outside the image, dead slots and holes in the depth must come out
    # as the torch reference (which tests every brick) has them.
    kernel_threads(threads)
    rng = np.random.default_rng(4)
    p = fusion_params(0.05)                                   # bricks of 0.4 m, depth range [0.1, 5]
    grid = torch.stack(torch.meshgrid(*(torch.arange(-10, 10),) * 3, indexing="ij"), -1).reshape(-1, 3)
    a, b = (SparseVoxelOctree(0.05, initial_bricks=16) for _ in range(2))
    for o in (a, b):
        o.allocate_bricks(grid.to(torch.int32), distinct=True)          # +-4 m around the camera
        o.erase_bricks(torch.arange(0, grid.shape[0], 7))                # dead slots in the pool
    depth = torch.from_numpy(rng.uniform(1.0, 3.5, (IMG_H, IMG_W)).astype(np.float32))
    depth[rng.random((IMG_H, IMG_W)) < 0.2] = float("nan")
    depth[rng.random((IMG_H, IMG_W)) < 0.1] = 0.0
    K = torch.from_numpy(K_SMALL)
    T = torch.from_numpy(look_at((0.1, -0.2, 0.05), (1.0, 0.7, 0.4)))
    cleared = integrate.rgbd_clearing_slots(a, depth, K, T, p)
    assert 20 < cleared.numel() < a.num_bricks // 20                 # most bricks are out of the slab
    sa = integrate.integrate_rgbd_torch(a, depth, None, K, T, p)
    sb = native.integrate_rgbd_cpp(b, depth, None, K, T, p)
    assert torch.equal(sa, sb)
    assert bool(torch.isin(cleared, sb).all())
    assert_maps_match(a, b)


@pytest.fixture
def kernel_threads():
    """Run a test with the kernels on a given thread count, then restore the default."""
    yield native.set_num_threads
    native.set_num_threads(0)


KERNEL_FIRST_BRICK_SET_ROOM = 8192      # bricks the LiDAR kernel's per-scan set holds before it first grows


def lidar_twins(p, n_scans: int, seed: int, after_scan=None):
    """Two octrees fed the same LiDAR scans, through the torch reference and through the kernel;
    the touched slots must match scan by scan. `after_scan(i)` runs after each kernel call."""
    rng = np.random.default_rng(seed)
    a = SparseVoxelOctree(p.voxel_size_m, initial_bricks=16)
    b = SparseVoxelOctree(p.voxel_size_m, initial_bricks=16)
    for i, T in enumerate(lidar_poses(n_scans, rng)):
        pts, Tt = lidar_scan(T, rng), torch.from_numpy(T)
        sa = integrate.integrate_lidar_torch(a, pts, Tt, p)
        sb = native.integrate_lidar_cpp(b, pts, Tt, p)
        if after_scan is not None:
            after_scan(i)
        assert torch.equal(sa, sb), f"scan {i}: touched slots differ"
    return a, b


@pytest.fixture
def fresh_kernel_context():
    """The kernels' scratch context as a new process has it (its buffers only ever grow, so an
    earlier test may have grown them already), restored afterwards."""
    lib, old = native._lib()
    ctx = lib.vx_ctx_new()
    assert ctx
    with native._lock:
        native._state["ctx"] = ctx
    yield
    with native._lock:
        native._state["ctx"] = old
    lib.vx_ctx_free(ctx)


def test_lidar_matches_torch_when_the_kernel_brick_set_grows(fresh_kernel_context):
    # 2 cm voxels: every scan touches more bricks than the kernel's first set holds, so the first
    # trace overflows it and runs again with fresh, larger buffers; later scans reuse them.
    def outgrew(i):
        assert native.last_lidar_stats()["bricks"] > KERNEL_FIRST_BRICK_SET_ROOM, f"scan {i}"
    assert_maps_match(*lidar_twins(fusion_params(0.02), 3, 5, outgrew))


@pytest.mark.parametrize("free_space,threads", [(True, 1), (True, 2), (True, 3), (False, 0)])
def test_lidar_matches_torch(free_space, threads, kernel_threads):
    kernel_threads(threads)             # 1: one bucket; 2, 3: a bucket per owner thread, private near counts, band merge split by mask (2) or division (3)
    a, b = lidar_twins(fusion_params(0.1, lidar_free_space=free_space), 4, 2)
    assert a.num_bricks > 20
    assert (a.attrs["occ"][a.brick_alive] > 0).sum() > 500          # hits
    if free_space:
        assert (a.attrs["occ"][a.brick_alive] < 0).sum() > 5_000    # misses
    assert_maps_match(a, b)
    assert_kernel_summaries_fresh(b)


_TEAM_REGIONS = """
import torch
from voxmap_ros.config import VoxmapConfig
from voxmap_ros.core import integrate, native
from voxmap_ros.core.octree import SparseVoxelOctree
native.set_num_threads(2)
o = SparseVoxelOctree(0.1, initial_bricks=16)
g = torch.Generator().manual_seed(0)
pts = torch.nn.functional.normalize(torch.randn(2000, 3, generator=g), dim=1) * 5
p = integrate.FusionParams.from_config(VoxmapConfig())
native.integrate_lidar_cpp(o, pts, torch.eye(4, dtype=torch.float64), p)
print(native.team_stats()["regions"])
"""


def test_kernel_teams_check_their_cpus_unless_turned_off():
    # The check itself (kernels/cpu/team.h) cannot be made to find a clash on demand; this asserts
    # that the LiDAR kernel's parallel regions run it, and that VOXMAP_SPREAD_THREADS=0 stops it.
    on = _run_python(_TEAM_REGIONS)
    off = _run_python(_TEAM_REGIONS, VOXMAP_SPREAD_THREADS="0")
    assert on.returncode == 0 and off.returncode == 0, on.stderr[-2000:] + off.stderr[-2000:]
    assert int(on.stdout.split()[-1]) >= 3                  # walk, band and apply, one scan
    assert int(off.stdout.split()[-1]) == 0


def test_lidar_edge_cases():
    p = fusion_params(0.1)
    T = torch.eye(4, dtype=torch.float64)
    empty = torch.zeros((0, 3), dtype=torch.float32)
    oc = SparseVoxelOctree(0.1)
    assert native.integrate_lidar_cpp(oc, empty, T, p).numel() == 0
    bad = torch.tensor([[np.nan, 0, 0], [0.1, 0, 0], [0, 0, 0]], dtype=torch.float32)   # all dropped
    assert native.integrate_lidar_cpp(oc, bad, T, p).numel() == 0
    assert oc.num_bricks == 0
    # A lone return beyond max range clears up to max range but makes no hit.
    far = torch.tensor([[30.0, 0.0, 0.0]], dtype=torch.float32)
    ref = SparseVoxelOctree(0.1)
    assert torch.equal(integrate.integrate_lidar_torch(ref, far, T, p), native.integrate_lidar_cpp(oc, far, T, p))
    assert_maps_match(ref, oc)
    assert (oc.attrs["occ"][oc.brick_alive] > 0).sum() == 0


def test_rgbd_empty_depth_visits_nothing():
    p = fusion_params(0.02)
    oc = SparseVoxelOctree(0.02)
    depth = torch.zeros((IMG_H, IMG_W), dtype=torch.float32)
    slots = native.integrate_rgbd_cpp(oc, depth, None, torch.from_numpy(K_SMALL), torch.eye(4, dtype=torch.float64), p)
    assert slots.numel() == 0 and oc.num_bricks == 0


def test_bad_inputs_raise_value_error():
    p = fusion_params(0.02)
    oc = SparseVoxelOctree(0.02)
    K, T = torch.from_numpy(K_SMALL), torch.eye(4, dtype=torch.float64)
    depth = torch.ones((IMG_H, IMG_W), dtype=torch.float32)
    with pytest.raises(ValueError, match="float32"):
        native.integrate_rgbd_cpp(oc, depth.double(), None, K, T, p)
    with pytest.raises(ValueError, match="contiguous"):
        native.integrate_rgbd_cpp(oc, torch.ones((IMG_W, IMG_H)).t(), None, K, T, p)
    with pytest.raises(ValueError, match="shape"):
        native.integrate_rgbd_cpp(oc, depth, torch.zeros((IMG_H, IMG_W), dtype=torch.uint8), K, T, p)
    with pytest.raises(ValueError, match="T_W_C"):
        native.integrate_rgbd_cpp(oc, depth, None, K, torch.eye(3, dtype=torch.float64), p)
    with pytest.raises(ValueError, match="points"):
        native.integrate_lidar_cpp(oc, torch.zeros((5, 4), dtype=torch.float32), T, p)
    with pytest.raises(ValueError, match="finite"):
        native.integrate_lidar_cpp(oc, torch.zeros((5, 3), dtype=torch.float32), torch.full((4, 4), np.nan), p)
    far = T.clone()
    far[0, 3] = 1e9                                       # bricks outside the key range
    with pytest.raises(ValueError, match="range"):
        native.integrate_lidar_cpp(oc, torch.ones((5, 3), dtype=torch.float32), far, p)
    assert oc.num_bricks == 0


def test_brick_summaries_match_octree():
    rng = np.random.default_rng(3)
    p = fusion_params(0.1)
    oc = SparseVoxelOctree(0.1)
    T = lidar_poses(1, rng)[0]
    slots = native.integrate_lidar_cpp(oc, lidar_scan(T, rng), torch.from_numpy(T), p)
    oc.update_summaries(slots)
    mo, mt, ob = native.brick_summaries_cpp(oc, slots)
    nodes = oc.brick_node[slots].long()
    assert torch.equal(mo, oc.node_max_occ[nodes])
    assert torch.equal(mt, oc.node_min_abs_tsdf[nodes])
    assert torch.equal(ob, oc.node_observed[nodes])


def test_closure_refresh_matches_torch_over_pruned_space():
    """Parent summaries from the compiled closure equal the torch ones, bitwise, on a LiDAR map
    with pruned (free) subtrees, for parent keys of every level at once."""
    import copy
    from voxmap_ros.core import morton
    rng = np.random.default_rng(5)
    p = fusion_params(0.1)
    oc = SparseVoxelOctree(0.1, free_logodds=-1.5)
    for T in lidar_poses(3, rng):
        oc.mark_stale(native.integrate_lidar_cpp(oc, lidar_scan(T, rng), torch.from_numpy(T), p))
    assert oc.prune_free(-0.3) > 0
    keys, ids = oc.table.items()
    parents = morton.level_of(keys) >= 1
    keys, ids = keys[parents], ids[parents].long()
    kid_ids = oc.table.lookup(morton.children(keys).reshape(-1)).long().reshape(-1, 8)
    assert bool(((oc.node_free_mask[ids] != 0) & (kid_ids < 0).any(1)).any())    # pruned children seen
    oc.node_max_occ[ids] = 7.0                           # stale values, overwritten by both
    oc.node_observed[ids] = False
    ref = copy.deepcopy(oc)
    ref._refresh_closure(keys)
    native.refresh_closure_cpp(oc, keys)
    for name in ("node_max_occ", "node_min_abs_tsdf", "node_observed"):
        assert torch.equal(getattr(oc, name), getattr(ref, name)), name
    with pytest.raises(ValueError, match="parent_keys"):
        native.refresh_closure_cpp(oc, keys.reshape(-1, 1))
    with pytest.raises(ValueError, match="levels >= 1"):
        native.refresh_closure_cpp(oc, oc.node_key[oc.brick_node[oc.alive_slots()[:3]].long()])


def test_compiled_ancestor_refresh_builds_the_torch_tree():
    """update_summaries through native.refresh_closure_cpp gives bitwise the octree the torch
    closure gives (same new nodes, same ids, same tables, same summaries), over pruned space and
    with parents missing (bricks allocated after the last refresh)."""
    import copy
    from conftest import assert_same_state, octree_state
    rng = np.random.default_rng(6)
    p = fusion_params(0.1)
    oc = SparseVoxelOctree(0.1, initial_bricks=16, free_logodds=-1.5)
    for T in lidar_poses(3, rng):
        oc.mark_stale(native.integrate_lidar_cpp(oc, lidar_scan(T, rng), torch.from_numpy(T), p))
    assert oc.prune_free(-0.3) > 0
    T = lidar_poses(1, rng)[0]
    T[:3, 3] += 40.0                                      # new ground: its parents do not exist yet
    slots = native.integrate_lidar_cpp(oc, lidar_scan(T, rng), torch.from_numpy(T), p)
    n_nodes = len(oc.table)
    ref = copy.deepcopy(oc)
    ref.update_summaries(slots)
    oc.use_kernels(refresh_closure=native.refresh_closure_cpp)
    oc.update_summaries(slots)
    assert len(oc.table) > n_nodes                        # new parents were created
    assert_same_state(octree_state(ref), octree_state(oc))


def test_bricks_free_matches_torch():
    """The prune test (every voxel observed free) of the compiled twin equals the torch one, on a
    LiDAR map that has both free and surface bricks, at thresholds on either side of the data."""
    rng = np.random.default_rng(4)
    p = fusion_params(0.1)
    oc = SparseVoxelOctree(0.1)
    for T in lidar_poses(3, rng):
        native.integrate_lidar_cpp(oc, lidar_scan(T, rng), torch.from_numpy(T), p)
    slots = oc.alive_slots()
    for occ_max in (p.l_min + 1e-3, -0.3, 0.0):
        want = oc.bricks_free_torch(slots, occ_max)
        got = native.bricks_free_cpp(oc, slots, occ_max, 0.999)
        assert torch.equal(got, want), occ_max
    assert 0 < int(oc.bricks_free_torch(slots, 0.0).sum()) < slots.numel()


def _run_python(code: str, **env) -> subprocess.CompletedProcess:
    e = dict(os.environ, PYTHONPATH=str(REPO), **env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e, timeout=120)


def test_import_builds_nothing_and_missing_compiler_is_reported(tmp_path):
    cache = tmp_path / "cache"
    res = _run_python("import voxmap_ros.core.native as n; print(n.unavailable_reason())",
                      VOXMAP_KERNEL_CACHE=str(cache))
    assert res.returncode == 0, res.stderr
    assert not cache.exists() or not any(cache.iterdir()), "importing compiled something"
    res = _run_python("import voxmap_ros.core.native as n; print(n.available()); print(n.unavailable_reason())",
                      VOXMAP_KERNEL_CACHE=str(cache), CXX="/nonexistent/g++")
    assert res.returncode == 0, res.stderr
    out = res.stdout.splitlines()
    assert out[0] == "False" and "not found" in out[1]


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64") or "avx2" not in _CPU_FLAGS,
                    reason="needs an x86 CPU with AVX2 (the fallback is what a build without it compiles)")
def test_kernels_built_without_avx2_still_match_torch(tmp_path):
    # The fusion kernels have AVX2/F16C paths (LiDAR apply, summaries, RGB-D halves) and plain C++
    # twins for CPUs without them; -march=native on this machine compiles only the former. Build
    # the library with both turned off (a compiler wrapper appends -mno-avx2 -mno-f16c) and run the
    # kernel-vs-torch comparisons against that build.
    wrapper = tmp_path / "g++"
    wrapper.write_text(f'#!/bin/sh\nexec {shutil.which("g++")} "$@" -mno-avx2 -mno-f16c\n')
    wrapper.chmod(0o755)
    env = dict(os.environ, CXX=str(wrapper), VOXMAP_KERNEL_CACHE=str(tmp_path / "cache"))
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(__file__)),
                          "-k", "lidar_matches_torch or rgbd_matches_torch or brick_summaries_match"],
                         env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert " passed" in res.stdout and "skipped" not in res.stdout.splitlines()[-1], res.stdout[-1000:]
    libs = list((tmp_path / "cache").glob("voxmap_kernels-*.so"))
    assert len(libs) == 1, "the wrapper's build was not the one used"
    text = subprocess.run(["objdump", "-d", str(libs[0])], capture_output=True, text=True).stdout \
        if shutil.which("objdump") else ""
    assert "vcvtph2ps" not in text, "the fallback build still contains F16C instructions"


SHARED_DATA = REPO.parent / "shared" / "data"


def test_real_frames_match_torch():
    """A few real frames (optional data under ../shared/data; skipped when absent)."""
    rgbd_dir, lidar_dir = SHARED_DATA / "7scenes-redkitchen", SHARED_DATA / "livox-hku-mainbuilding"
    if not (rgbd_dir.is_dir() and lidar_dir.is_dir()):
        pytest.skip(f"shared data not found under {SHARED_DATA}")
    cv2 = pytest.importorskip("cv2")
    p = fusion_params(0.02)
    K = torch.from_numpy(np.loadtxt(rgbd_dir / "intrinsics.txt"))
    poses = np.loadtxt(rgbd_dir / "poses.txt").reshape(-1, 4, 4)
    a, b = SparseVoxelOctree(0.02), SparseVoxelOctree(0.02)
    for i in (0, 40, 80):
        d = cv2.imread(str(rgbd_dir / f"depth/{i:06d}.png"), cv2.IMREAD_UNCHANGED).astype(np.float32)
        d[d == 65535] = 0
        depth = torch.from_numpy(d / 1000.0)
        rgb = torch.from_numpy(np.ascontiguousarray(cv2.imread(str(rgbd_dir / f"color/{i:06d}.jpg"))[..., ::-1]))
        T = torch.from_numpy(poses[i].copy())
        assert torch.equal(integrate.integrate_rgbd_torch(a, depth, rgb, K, T, p),
                           native.integrate_rgbd_cpp(b, depth, rgb, K, T, p))
    assert_maps_match(a, b)
    p = fusion_params(0.1, lidar_max_m=50.0)
    rows = np.loadtxt(lidar_dir / "poses.txt")
    a, b = SparseVoxelOctree(0.1), SparseVoxelOctree(0.1)
    for i in (0, 20):
        pts = np.fromfile(lidar_dir / f"velodyne/{i:06d}.bin", dtype=np.float32).reshape(-1, 4)[:, :3]
        T = np.eye(4)
        T[:3] = rows[i].reshape(3, 4)
        pts_t, T_t = torch.from_numpy(np.ascontiguousarray(pts)), torch.from_numpy(T)
        assert torch.equal(integrate.integrate_lidar_torch(a, pts_t, T_t, p),
                           native.integrate_lidar_cpp(b, pts_t, T_t, p))
    assert_maps_match(a, b)


_MANY_BRICKS = """
import sys, numpy as np
from voxmap_ros.config import VoxmapConfig
from voxmap_ros.core.mapper import Mapper
from voxmap_ros.types import Frame
backend = sys.argv[1]
W, H = 320, 64
K = np.array([[250., 0, W / 2], [0, 250, H / 2], [0, 0, 1]])
depth = np.random.default_rng(0).uniform(0.5, 5.0, (H, W)).astype(np.float32)    # a cluttered scene
out = []
for kind in ("rgbd", "lidar"):
    cfg = VoxmapConfig(); cfg.map.voxel_size_m = 0.01; cfg.map.backend = backend; cfg.map.reserve_bricks = 0
    cfg.lidar.max_range_m = 5000.0
    m = Mapper(cfg)
    frame = (Frame(np.eye(4), depth=depth, K=K) if kind == "rgbd"
             else Frame(np.eye(4), points=np.array([[1500.0, 0.001, 0.001]], np.float32)))   # one 1.5 km ray
    m.integrate(frame)
    out.append(str(m.octree.num_bricks))
print(" ".join(out))
"""


def test_frames_touching_more_bricks_than_the_first_table_holds():
    """More distinct bricks in one frame (over 2^14, in an RGB-D frame and along one 1.5 km LiDAR
    ray at 1 cm) than the kernel's first brick table holds: the table grows and the result equals
    the torch path's. Once this never returned (the full table was probed forever), so each backend
    runs in a process of its own with a time limit."""
    counts = {}
    for backend in ("torch", "cpp"):
        r = subprocess.run([sys.executable, "-c", _MANY_BRICKS, backend], capture_output=True, text=True,
                           timeout=120, env=dict(os.environ, OMP_NUM_THREADS="2"))
        assert r.returncode == 0, r.stderr[-2000:]
        counts[backend] = r.stdout.split()
    assert counts["cpp"] == counts["torch"]
    assert int(counts["cpp"][0]) > 2 ** 14 and int(counts["cpp"][1]) > 2 ** 14


def test_lidar_on_a_scene_with_walls_on_voxel_boundaries_is_bit_identical():
    """The generated room's walls and floor lie on voxel boundaries, where a last-bit difference in
    a ray's direction flips hit / miss: both paths compute directions in the same order."""
    from voxmap_ros.sim import lidar_trajectory, make_scene, scan_lidar
    sc = make_scene("indoor", 0)
    p = fusion_params(0.05)
    a, b = SparseVoxelOctree(p.voxel_size_m, initial_bricks=16), SparseVoxelOctree(p.voxel_size_m, initial_bricks=16)
    for T in lidar_trajectory(sc, 2, seed=0, height_m=1.2):
        pts = torch.from_numpy(scan_lidar(sc, T, beams=8, hfov_samples=256, vfov_deg=(-30, 15)).astype(np.float32))
        Tt = torch.from_numpy(np.asarray(T, np.float64))
        assert torch.equal(integrate.integrate_lidar_torch(a, pts, Tt, p), native.integrate_lidar_cpp(b, pts, Tt, p))
    alive = a.brick_alive
    assert torch.equal(alive, b.brick_alive) and int(alive.sum()) > 50
    for name in ("tsdf", "weight", "occ"):
        assert torch.equal(a.attrs[name][alive], b.attrs[name][alive]), name


@pytest.mark.parametrize("origin", [(0.0, 0.0, 0.0), (0.05, 0.05, 0.05), (0.8, -0.8, 1.6), (-3.3, 7.1, -0.25)])
def test_lidar_rays_with_tied_crossings_match_torch(origin, kernel_threads):
    """Rays along the axes and the exact diagonals from a voxel corner, a voxel centre and a brick
    corner cross several voxel boundaries at the same t: the walk (eight rays at a time where the
    CPU has AVX2) must break the ties as the reference does (x, then y, then z), in both directions,
    for rays of every length, including ones that end inside the near-sensor bricks."""
    kernel_threads(2)
    dirs = np.array([(x, y, z) for x in (-1, 0, 1) for y in (-1, 0, 1) for z in (-1, 0, 1) if (x, y, z) != (0, 0, 0)],
                    np.float64)
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    lengths = np.array([0.3, 0.75, 1.2, 2.0, 3.45, 7.9])
    pts = torch.from_numpy((dirs[:, None, :] * lengths[None, :, None]).reshape(-1, 3).astype(np.float32))
    T = torch.eye(4, dtype=torch.float64)
    T[:3, 3] = torch.tensor(origin, dtype=torch.float64)
    p = fusion_params(0.1)
    ref, oc = SparseVoxelOctree(0.1), SparseVoxelOctree(0.1)
    for _ in range(2):
        assert torch.equal(integrate.integrate_lidar_torch(ref, pts, T, p), native.integrate_lidar_cpp(oc, pts, T, p))
    assert_maps_match(ref, oc)
    assert native.last_lidar_stats()["voxels_touched"] > 2000


@pytest.mark.parametrize("far", [[0.0, 0.0, 3.4028235e38], [3e19, 4e19, 0.0]])
def test_a_point_whose_norm_overflows_is_a_no_return_ray(far):
    """Some drivers mark "no return" with FLT_MAX: the norm overflows to inf, and the ray must still
    clear free space up to max range along the point's direction, like any return beyond it."""
    p = fusion_params(0.1)
    T = torch.eye(4, dtype=torch.float64)
    big = torch.tensor([far], dtype=torch.float32)
    same_dir = torch.tensor([np.asarray(far) / np.linalg.norm(far) * 1e6], dtype=torch.float32)  # finite norm
    maps = []
    for pts in (big, same_dir):
        ref, oc = SparseVoxelOctree(0.1), SparseVoxelOctree(0.1)
        integrate.integrate_lidar_torch(ref, pts, T, p)
        native.integrate_lidar_cpp(oc, pts, T, p)
        assert_maps_match(ref, oc)
        maps.append(ref)
    observed = [int((m.attrs["occ"][m.brick_alive] != 0).sum()) for m in maps]
    assert observed[0] == observed[1] >= int(p.lidar_max_m / p.voxel_size_m)
    assert int((maps[0].attrs["occ"][maps[0].brick_alive] > 0).sum()) == 0          # no hit
