"""Sparse-voxel rasterizer (voxmap_ros.render), reference renderer and typed wrapper: gradients,
front-to-back order, analytic plane and sphere depth, level of detail, bad input, and the depth of
a fused simulated map at the fused and at held-out poses. The fast paths are compared with the
reference in test_render_cpu.py and test_render_triton.py."""
import math

import numpy as np
import pytest
import torch

from conftest import make_config
from voxmap_ros.core.mapper import Mapper
from voxmap_ros.render import ALPHA_EPS, TsdfField, VoxelSet, make_camera, render, render_map
from voxmap_ros.render.binning import bin_cells
from voxmap_ros.render.camera import MAX_IMAGE_SIDE
from voxmap_ros.render.voxels import DEFAULT_SHARPNESS_VOX, voxels_from_sdf
from voxmap_ros.sim import indoor_camera_trajectory, look_at, make_scene, render_rgbd
from voxmap_ros.sim.dataset_writer import default_intrinsics
from voxmap_ros.types import Frame

pytestmark = pytest.mark.usefixtures("single_thread")

VOXEL_M = 0.05
SHARP = DEFAULT_SHARPNESS_VOX / VOXEL_M  # SDF sharpness (1/m) of the analytic scenes: the default
ANALYTIC_TOL_M = VOXEL_M / 4            # plane and sphere depth: a quarter voxel
OPAQUE_ALPHA = 0.99                     # pixels counted as hitting a surface
SIM_W, SIM_H = 80, 60                   # simulated frames of the fused-map tests
FUSED_MEDIAN_TOL_M = VOXEL_M / 2        # median |rendered - input depth| at the fused poses
HELDOUT_MEDIAN_TOL_M = VOXEL_M          # ... at held-out poses vs ground truth (the bar)
COVERAGE_MIN = 0.9                      # fraction of valid ground-truth pixels that get a depth
LOD_MEDIAN_TOL_M = VOXEL_M              # level-1 cells (two voxels) vs level 0, median depth change
GRAD_SHARP = 100.0                      # 1/m, SDF sharpness of the gradient scenes


def _cam(K, T, w, h, near=0.05, far=20.0):
    return make_camera(np.asarray(K, np.float64), np.asarray(T, np.float64), w, h, near, far)


def _K(w, h, f):
    return np.array([[f, 0, (w - 1) / 2], [0, f, (h - 1) / 2], [0, 0, 1]], np.float64)


# ---------------------------------------------------------------------------------- analytic scenes
def _plane_case():
    n = torch.tensor([0.25, -0.15, -1.0], dtype=torch.float64)
    n = n / n.norm()
    d0 = 1.2                                                  # plane n . p + d0 = 0, n facing the camera
    vs = voxels_from_sdf(lambda p: p @ n + d0, (-1.2, -1.0, 0.6), (1.2, 1.0, 2.0), VOXEL_M, 4 * VOXEL_M)
    return vs, n, d0


@pytest.mark.parametrize("samples", [2, 4])
def test_plane_depth_analytic(samples):
    vs, n, d0 = _plane_case()
    cam = _cam(_K(48, 36, 40.0), np.eye(4), 48, 36)
    out = render(vs, cam, "sdf", sharpness=SHARP, samples=samples, backend="reference")
    t_true = -d0 / (cam.directions() @ n)
    assert float(out.alpha.min()) > OPAQUE_ALPHA
    err = (out.depth - t_true).abs()
    assert float(err.max()) < ANALYTIC_TOL_M, float(err.max()) / VOXEL_M


def test_sphere_depth_analytic():
    c = torch.tensor([0.1, -0.05, 1.5], dtype=torch.float64)
    R = 0.4
    vs = voxels_from_sdf(lambda p: (p - c).norm(dim=1) - R, (-0.45, -0.6, 0.9), (0.65, 0.5, 2.1), VOXEL_M,
                         4 * VOXEL_M)
    cam = _cam(_K(48, 36, 60.0), np.eye(4), 48, 36)
    out = render(vs, cam, "sdf", sharpness=SHARP, backend="reference")
    d = cam.directions().reshape(-1, 3)
    a, b, cc = (d * d).sum(1), -2 * (d @ c), c @ c - R * R
    disc = b * b - 4 * a * cc
    hit = (disc > 0).reshape(36, 48)
    t_true = ((-b - disc.clamp_min(0).sqrt()) / (2 * a)).reshape(36, 48)
    opaque = out.alpha > OPAQUE_ALPHA
    assert bool((opaque <= hit).all())                          # nothing drawn off the sphere
    assert int(opaque.sum()) > 0.6 * int(hit.sum())             # the silhouette band is partly transparent
    err = (out.depth - t_true).abs()[opaque]
    assert float(err.max()) < ANALYTIC_TOL_M, float(err.max()) / VOXEL_M
    assert float(out.alpha[~hit].max()) < 0.5


def test_normals_face_the_camera():
    vs, n, _ = _plane_case()
    cam = _cam(_K(24, 18, 20.0), np.eye(4), 24, 18)
    out = render(vs, cam, "sdf", sharpness=SHARP, backend="reference")
    assert float((out.normal.reshape(-1, 3) @ n).min()) > 0.99


# ---------------------------------------------------------------------------------- order
def _two_cells(first_is_a: bool, dtype=torch.float64):
    coords = torch.tensor([[0, 0, 0], [1, 0, 0]])
    colors = torch.tensor([[1.0, 0, 0], [0, 0, 1.0]], dtype=dtype)      # A red at x in [0, 1], B blue
    if not first_is_a:
        coords, colors = coords.flip(0), colors.flip(0)
    values = torch.full((2, 8), 2000.0, dtype=dtype)                 # opaque densities (1/m)
    return VoxelSet(coords, torch.zeros(2, dtype=torch.int64), values, colors, 0.1,
                    torch.tensor([0.0, -0.05, -0.05], dtype=torch.float64))


def backends():
    from voxmap_ros.render import cpu_fast
    out = ["reference"]
    if cpu_fast.available():
        out.append("cpu")
    return out


@pytest.mark.parametrize("backend", backends())
@pytest.mark.parametrize("first_is_a", [True, False])
def test_front_to_back_order_from_both_sides(backend, first_is_a):
    vs = _two_cells(first_is_a)
    for eye_x, want_rgb, want_face in ((-0.5, (1, 0, 0), 0.0), (0.7, (0, 0, 1), 0.2)):
        T = look_at((eye_x, 0.01, 0.02), (0.1, 0.0, 0.0))
        cam = _cam(_K(9, 7, 8.0), T, 9, 7)
        out = render(vs, cam, "density", backend=backend)
        centre = out.color[3, 4]
        assert torch.allclose(centre, torch.tensor(want_rgb, dtype=centre.dtype), atol=1e-3), (eye_x, centre)
        face_dist = abs(eye_x - want_face)                         # depth of the front face along the axis
        # An opaque cell puts its weight at the middle of its first sub-segment (2 per 0.1 m cell).
        assert abs(float(out.depth[3, 4]) - (face_dist + 0.025)) < 0.002
        front = out.voxel_id[3, 4]
        assert int(front) == (0 if (want_face == 0.0) == first_is_a else 1)


def test_groups_are_front_to_back_for_every_octant():
    """Inside each (tile, octant) group the cells come in non-decreasing entry depth along every
    ray of that octant that meets them (checked on a random cloud of cells, all 8 octants)."""
    g = torch.Generator().manual_seed(0)
    coords = torch.unique(torch.randint(-6, 6, (300, 3), generator=g), dim=0)
    n = coords.shape[0]
    vs = VoxelSet(coords, torch.zeros(n, dtype=torch.int64), torch.ones(n, 8, dtype=torch.float64),
                  torch.rand(n, 3, dtype=torch.float64, generator=g), 0.1)
    from voxmap_ros.render.reference import slab
    K = _K(32, 32, 10.0)          # wide field of view: the image holds several octants
    seen = set()
    for eye in ((0.05, 0.03, -2.0), (2.0, -1.7, 0.3), (-0.2, 2.1, 1.5)):
        cam = _cam(K, look_at(eye, (0.0, 0.0, 0.0)), 32, 32)
        b = bin_cells(vs, cam)
        dirs = cam.directions().reshape(-1, 3)
        for gi in range(b.group_tile.numel()):
            tile, octant = int(b.group_tile[gi]), int(b.group_octant[gi])
            seen.add(octant)
            ty, tx = divmod(tile, b.tiles_x)
            cells = b.entries[int(b.group_start[gi]):int(b.group_end[gi])]
            pix = torch.tensor([v * 32 + u for v in range(ty * 16, ty * 16 + 16) for u in range(tx * 16, tx * 16 + 16)])
            pix = pix[b.pixel_octant.reshape(-1)[pix] == octant]
            t_in, t_out = slab(cam.origin, dirs[pix], vs.cell_lo_m(), vs.cell_size_m(), 1e-6, 1e6)
            t_in, t_out = t_in[:, cells], t_out[:, cells]
            hit = t_out > t_in + 1e-9
            t = torch.where(hit, t_in, torch.full_like(t_in, float("nan")))
            for row in t:
                r = row[~torch.isnan(row)]
                assert bool((r[1:] >= r[:-1] - 1e-9).all())
    assert len(seen) >= 4


# ---------------------------------------------------------------------------------- gradients
def _grad_scene(field: str):
    g = torch.Generator().manual_seed(1)
    coords = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1], [1, 0, 1], [0, 1, 1]])
    n = coords.shape[0]
    if field == "sdf":
        values = torch.rand(n, 8, dtype=torch.float64, generator=g) * 0.08 - 0.03
    else:
        values = torch.rand(n, 8, dtype=torch.float64, generator=g) * 20.0
    colors = torch.rand(n, 3, dtype=torch.float64, generator=g)
    T = look_at((0.14, 0.17, -0.25), (0.05, 0.05, 0.05))
    cam = _cam(_K(8, 6, 16.0), T, 8, 6, near=0.01)
    return coords, values, colors, cam


@pytest.mark.parametrize("field", ["sdf", "density"])
def test_gradcheck_reference(field):
    coords, values, colors, cam = _grad_scene(field)
    n = coords.shape[0]

    def fn(v, c):
        vs = VoxelSet(coords, torch.zeros(n, dtype=torch.int64), v, c, 0.05)
        o = render(vs, cam, field, sharpness=GRAD_SHARP, samples=2, backend="reference")
        return o.alpha, o.depth_acc, o.color, o.depth

    out = fn(values, colors)
    assert float(out[0].max()) > 0.3 and int((out[0] > 0).sum()) > 10       # the cells are in view
    assert torch.autograd.gradcheck(fn, (values.clone().requires_grad_(), colors.clone().requires_grad_()),
                                    eps=1e-6, atol=1e-5)


# ---------------------------------------------------------------------------------- bad input
def _good():
    vs = _two_cells(True)
    return vs, _K(8, 6, 8.0), np.eye(4)


@pytest.mark.parametrize("case", [
    "K_shape", "K_nonfinite", "K_negative_f", "K_last_row", "pose_scaled", "pose_sheared", "pose_shape",
    "pose_last_row", "pose_reflection", "width_zero", "height_zero", "huge", "width_float", "near_far",
    "near_zero", "far_beyond_float32", "K_bool", "K_complex", "K_quantized"])
def test_bad_camera(case):
    _, K, T = _good()
    w, h, near, far = 8, 6, 0.05, 10.0
    if case == "K_shape":
        K = K[:2]
    elif case == "K_nonfinite":
        K = K.copy(); K[0, 0] = np.nan
    elif case == "K_negative_f":
        K = K.copy(); K[1, 1] = -5
    elif case == "K_last_row":
        K = K.copy(); K[2, 2] = 2
    elif case == "pose_scaled":
        T = T.copy(); T[:3, :3] *= 1.5
    elif case == "pose_sheared":
        T = T.copy(); T[0, 1] = 0.3
    elif case == "pose_shape":
        T = T[:3]
    elif case == "pose_last_row":
        T = T.copy(); T[3, 0] = 1
    elif case == "pose_reflection":
        T = np.diag([1.0, 1.0, -1.0, 1.0])
    elif case == "width_zero":
        w = 0
    elif case == "height_zero":
        h = 0
    elif case == "huge":
        w = h = MAX_IMAGE_SIDE + 1
    elif case == "width_float":
        w = 8.5
    elif case == "near_far":
        near, far = 2.0, 1.0
    elif case == "near_zero":
        near = 0.0
    elif case == "far_beyond_float32":               # once accepted, then an overflow in the reference
        far = 1e39
    elif case == "K_bool":                            # once silently an identity K
        K = np.eye(3, dtype=bool)
    elif case == "K_complex":                         # once the imaginary part was dropped
        K = K.astype(complex)
    elif case == "K_quantized":                       # a RuntimeError, not a ValueError, for a while
        K = torch.quantize_per_tensor(torch.as_tensor(K, dtype=torch.float32), 0.5, 0, torch.quint8)
    with pytest.raises(ValueError):
        make_camera(K, T, w, h, near, far)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.float16, torch.float64])
def test_camera_from_tensors_of_any_real_dtype(dtype):
    """Tensors take the dtypes numpy arrays do (once int16 / uint8 tensors were refused, arrays not)."""
    K, T = np.array([[8.0, 0, 4], [0, 8, 3], [0, 0, 1]]), np.eye(4)    # whole numbers: exact in uint8
    want = make_camera(K, T, 8, 6)
    got = make_camera(torch.as_tensor(K).to(dtype), torch.as_tensor(T).to(dtype), 8, 6)
    assert torch.equal(got.K, want.K) and torch.equal(got.T_W_C, want.T_W_C)


@pytest.mark.parametrize("case", [
    "values_shape", "values_dtype", "colors_shape", "dtype_mismatch", "coords_shape", "misaligned",
    "negative_density", "nan_values", "field", "sharpness", "samples", "t_min", "backend", "camera",
    "voxel_size", "not_voxelset"])
def test_bad_render_input(case):
    vs, K, T = _good()
    cam = make_camera(K, T, 8, 6)
    kw = dict(field="density", sharpness=None, samples=2, t_min=1e-4, backend="reference")
    v = vs
    if case == "values_shape":
        v = VoxelSet(vs.coords, vs.level, vs.values[:, :4], vs.colors, vs.voxel_size_m)
    elif case == "values_dtype":
        v = VoxelSet(vs.coords, vs.level, vs.values.long(), vs.colors, vs.voxel_size_m)
    elif case == "colors_shape":
        v = VoxelSet(vs.coords, vs.level, vs.values, vs.colors[:1], vs.voxel_size_m)
    elif case == "dtype_mismatch":
        v = VoxelSet(vs.coords, vs.level, vs.values, vs.colors.float(), vs.voxel_size_m)
    elif case == "coords_shape":
        v = VoxelSet(vs.coords[:, :2], vs.level, vs.values, vs.colors, vs.voxel_size_m)
    elif case == "misaligned":
        v = VoxelSet(vs.coords, torch.ones(2, dtype=torch.int64), vs.values, vs.colors, vs.voxel_size_m)
    elif case == "negative_density":
        v = VoxelSet(vs.coords, vs.level, -vs.values, vs.colors, vs.voxel_size_m)
    elif case == "nan_values":
        bad = vs.values.clone(); bad[0, 0] = float("nan")
        v = VoxelSet(vs.coords, vs.level, bad, vs.colors, vs.voxel_size_m)
    elif case == "field":
        kw["field"] = "occupancy"
    elif case == "sharpness":
        kw.update(field="sdf", sharpness=0.0)
    elif case == "samples":
        kw["samples"] = 0
    elif case == "t_min":
        kw["t_min"] = 1.5
    elif case == "backend":
        kw["backend"] = "vulkan"
    elif case == "camera":
        cam = (K, T)
    elif case == "voxel_size":
        v = VoxelSet(vs.coords, vs.level, vs.values, vs.colors, -0.1)
    elif case == "not_voxelset":
        v = {"coords": vs.coords}
    with pytest.raises(ValueError):
        render(v, cam, **kw)


def test_empty_voxel_set_renders_empty():
    vs = VoxelSet(torch.zeros((0, 3), dtype=torch.int64), torch.zeros(0, dtype=torch.int64),
                  torch.zeros((0, 8)), torch.zeros((0, 3)), 0.1)
    cam = make_camera(_K(8, 6, 8.0), np.eye(4), 8, 6)
    for be in backends():
        out = render(vs, cam, "density", backend=be)
        assert float(out.alpha.abs().max()) == 0 and int(out.voxel_id.max()) == -1


def test_a_view_with_nothing_in_it_still_has_gradients():
    """Cells all behind the camera: every backend returns a zero image that backward() accepts with
    zero gradients (the reference once returned tensors outside the graph)."""
    vs = _two_cells(True)
    T_away = np.eye(4)
    T_away[2, 3] = 1.0                                 # 1 m ahead of the cells, looking away (+z)
    cam = make_camera(_K(8, 6, 8.0), T_away, 8, 6)
    for be in backends():
        values = vs.values.clone().requires_grad_()
        colors = vs.colors.clone().requires_grad_()
        out = render(VoxelSet(vs.coords, vs.level, values, colors, vs.voxel_size_m, vs.origin_m), cam, "density",
                     backend=be)
        assert float(out.alpha.abs().max()) == 0
        (out.alpha.sum() + out.depth_acc.sum() + out.color.sum()).backward()
        assert float(values.grad.abs().max()) == 0 and float(colors.grad.abs().max()) == 0, be


# ---------------------------------------------------------------------------------- fused maps
@pytest.fixture(scope="module")
def fused_room():
    """The indoor scene fused at 5 cm from 12 noise-free 80x60 frames; 4 held-out poses."""
    scene = make_scene("indoor", 0)
    poses = indoor_camera_trajectory(scene, 16, seed=3)
    K = default_intrinsics(SIM_W, SIM_H)
    cfg = make_config(VOXEL_M)
    cfg.map.backend = "auto"
    m = Mapper(cfg)
    fused, held = [], []
    for i, T in enumerate(poses):
        depth, rgb, _ = render_rgbd(scene, K, T, SIM_W, SIM_H)
        (held if i % 4 == 2 else fused).append((depth, rgb, T))
    for depth, rgb, T in fused:
        m.integrate(Frame(T_W_S=T, depth=depth, rgb=rgb, K=K))
    field = TsdfField.from_mapper(m)
    return m, field, K, fused, held


def _depth_errors(field, K, frames, lod_px=0.0, backend="auto"):
    errs, cover = [], []
    for depth, _, T in frames:
        out = render_map(field, K, T, SIM_W, SIM_H, near_m=0.1, far_m=8.0, lod_px=lod_px, backend=backend)
        gt = torch.from_numpy(depth).double()
        d = out.depth.double()
        valid = gt > 0
        both = valid & (out.alpha > 0.5)
        errs.append((d[both] - gt[both]).abs())
        cover.append(float(both.sum()) / max(1, int(valid.sum())))
    return torch.cat(errs), float(np.mean(cover))


def test_fused_map_reproduces_input_depth(fused_room):
    _, field, K, fused, _ = fused_room
    err, cover = _depth_errors(field, K, fused[::3])
    assert cover > COVERAGE_MIN
    assert float(err.median()) < FUSED_MEDIAN_TOL_M, float(err.median())


def test_heldout_poses_depth_within_a_voxel(fused_room):
    _, field, K, _, held = fused_room
    err, cover = _depth_errors(field, K, held)
    assert cover > COVERAGE_MIN - 0.1              # held-out views see a little unfused space
    assert float(err.median()) <= HELDOUT_MEDIAN_TOL_M, float(err.median())


def test_lod_levels_grow_with_distance_and_keep_depth(fused_room):
    m, _, K, fused, _ = fused_room
    field = TsdfField.from_mapper(m, max_level=1)
    depth, _, T = fused[0]
    cam = make_camera(K, T, SIM_W, SIM_H, 0.1, 8.0)
    lv, vis = field.brick_levels(cam, lod_px=1.5)
    z = cam.world_to_camera(field.origin_m + (field.brick_coord.double() * 8 + 4) * VOXEL_M)[:, 2]
    near_lv = lv[vis & (z < z[vis].median())].float().mean()
    far_lv = lv[vis & (z >= z[vis].median())].float().mean()
    assert float(far_lv) >= float(near_lv)
    # Force level 1 everywhere: about 8x fewer cells, depth within tolerance of level 0.
    fine = field.voxels(cam, lod_px=0.0)
    coarse = field.voxels(cam, lod_px=1e6)
    assert len(coarse) * 4 < len(fine)
    assert int(coarse.level.min()) == 1
    o0 = render(fine, cam, "sdf", sharpness=field.sharpness, backend="reference")
    o1 = render(coarse, cam, "sdf", sharpness=field.sharpness, backend="reference")
    both = (o0.alpha > 0.5) & (o1.alpha > 0.5)
    assert float(both.float().mean()) > 0.8
    diff = (o0.depth - o1.depth).abs()[both]
    assert float(diff.median()) < LOD_MEDIAN_TOL_M, float(diff.median())


def test_view_cells_are_those_of_visible_bricks_at_their_level(fused_room):
    m, _, K, fused, _ = fused_room
    field = TsdfField.from_mapper(m, max_level=1)
    cam = make_camera(K, fused[0][2], SIM_W, SIM_H, 0.1, 8.0)
    lv, vis = field.brick_levels(cam, lod_px=1.5)
    got = field.voxels(cam, lod_px=1.5)
    # The plain definition: every cell whose brick is visible and drawn at the cell's level.
    want = [(L["coords"][vis[L["brick"]] & (lv[L["brick"]] == li)], li) for li, L in enumerate(field.levels)]
    assert {int(x) for x in got.level.unique()} <= {0, 1} and len(got) == sum(len(c) for c, _ in want)
    assert torch.equal(got.coords, torch.cat([c for c, _ in want]))
    assert torch.equal(got.level, torch.cat([torch.full((len(c),), li) for c, li in want]))


def test_render_output_fields(fused_room):
    _, field, K, fused, _ = fused_room
    depth, rgb, T = fused[0]
    out = render_map(field, K, T, SIM_W, SIM_H, near_m=0.1, far_m=8.0, backend="reference")
    assert out.depth.shape == (SIM_H, SIM_W) and out.color.shape == (SIM_H, SIM_W, 3)
    assert out.voxel_id.dtype == torch.int64 and out.backend == "reference"
    drawn = out.alpha > 0.5
    assert bool((out.voxel_id[drawn] >= 0).all())
    ids = out.voxel_id[drawn]
    slots, lin = ids // 512, ids % 512
    assert bool(field.octree.brick_alive[slots].all())
    assert bool((out.depth[out.alpha <= ALPHA_EPS] == 0).all())
    # Colours: the map's colour of the surface, close to the input image where drawn opaque.
    col_err = (out.color[drawn] / out.alpha[drawn, None] * 255 - torch.from_numpy(rgb)[drawn].double()).abs()
    assert float(col_err.median()) < 20
    nrm = out.normal[drawn].norm(dim=-1)
    assert float((nrm - 1).abs().max()) < 1e-4


def test_default_lod_pyramid_keeps_the_surface_at_its_coarsest_level(fused_room):
    """Every brick at the coarsest default level (lod_px huge): the surface is still there. With
    levels 2-3 at trunc 4 voxels, a quarter to most of it vanished."""
    from voxmap_ros.render.voxels import default_max_level
    m, _, K, fused, _ = fused_room
    assert [default_max_level(t) for t in (1, 2, 3, 4, 5, 8, 9, 16, 100)] == [0, 0, 1, 1, 2, 2, 3, 3, 3]
    field = TsdfField.from_mapper(m)
    assert field.max_level == default_max_level(m.config.tsdf.trunc_vox)
    covers = []
    for depth, _, T in fused[::3]:
        cam = make_camera(K, T, SIM_W, SIM_H, 0.1, 8.0)
        out = render(field.voxels(cam, lod_px=1e9), cam, field="sdf", sharpness=field.sharpness)
        valid = torch.from_numpy(depth) > 0
        covers.append(float((valid & (out.alpha > 0.5)).sum()) / max(1, int(valid.sum())))
    assert min(covers) > COVERAGE_MIN, covers


def test_densities_near_the_float32_limit_stay_finite():
    """Opaque cells of density 3e38 / 6e31 (1/m): every backend gives alpha 1 and unit normals, no
    NaN (the reference once summed inf - inf, and its normals' float32 norm overflowed to 0)."""
    cam = _cam(_K(9, 7, 8.0), look_at((-0.5, 0.01, 0.02), (0.1, 0.0, 0.0)), 9, 7)
    for dens in (3e38, 6e31):
        vs = _two_cells(True, dtype=torch.float32)
        vs = VoxelSet(vs.coords, vs.level, torch.full_like(vs.values, dens), vs.colors, vs.voxel_size_m, vs.origin_m)
        vs = VoxelSet(vs.coords, vs.level, vs.values * torch.tensor([1.0, 1, 1, 1, 0.5, 0.5, 0.5, 0.5]), vs.colors,
                      vs.voxel_size_m, vs.origin_m)          # a gradient along z: a defined normal
        for be in backends():
            out = render(vs, cam, "density", backend=be)
            hit = out.alpha > 0.5
            assert bool(torch.isfinite(out.alpha).all()) and int(hit.sum()) > 0, (be, dens)
            assert torch.allclose(out.normal[hit].norm(dim=-1), torch.ones(int(hit.sum())), atol=1e-4), (be, dens)
