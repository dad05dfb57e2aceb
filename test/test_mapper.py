"""Mapper: input validation before any state change, meshing (crack-free, incremental = full),
mesh store after clearing and pruning, summary and backend choice."""
import math
from collections import Counter

import numpy as np
import pytest
import torch

from conftest import CPU_BACKENDS, IMG_H, IMG_W, SMALL_K, assert_same_state, make_config, octree_state
from voxmap_ros.core import morton
from voxmap_ros.core.mapper import Mapper
from voxmap_ros.core.octree import BRICK
from voxmap_ros.sim import Scene, box_mesh, look_at, render_rgbd, scan_lidar, sphere_mesh
from voxmap_ros.types import Frame

pytestmark = pytest.mark.usefixtures("single_thread")

VOXEL_M = 0.05
SPHERE_VOXEL_M = 0.02
SPHERE_RADIUS_M = 0.37
SPHERE_CENTRE_M = np.array([-0.113, 0.071, 0.049])      # not aligned with bricks, spans negatives
SPHERE_TOL_M = 0.1 * SPHERE_VOXEL_M                       # linear interpolation of an exact SDF
VERTEX_DECIMALS = 5                                       # compare vertices to 10 micrometres


# ------------------------------------------------------------------------------------ bad input
@pytest.fixture
def mapper_with_data(indoor_data):
    m = Mapper(make_config(VOXEL_M))
    d, c, T = indoor_data.frames[0]
    m.integrate(Frame(T, depth=d, rgb=c, K=indoor_data.K))
    assert m.octree.num_bricks > 0
    return m, indoor_data.frames[1]


def _bad_frames(d, c, T):
    K = SMALL_K
    Tn = T.copy(); Tn[0, 3] = np.nan
    Ti = T.copy(); Ti[1, 1] = np.inf
    Ts = T.copy(); Ts[:3, :3] *= 1.1
    Tr = T.copy(); Tr[3] = [0, 0, 0.5, 1]
    Kn = K.copy(); Kn[0, 0] = -K[0, 0]
    Kz = K.copy(); Kz[1, 1] = 0.0
    Kr = K.copy(); Kr[2] = [0.0, 0.1, 1.0]
    Tfar = T.copy(); Tfar[0, 3] = 1e6                      # past the key range at 5 cm voxels (~105 km)
    pts = np.random.default_rng(0).uniform(-3, 3, (100, 3)).astype(np.float32)
    return {
        "not a frame": (None, "takes a voxmap_ros.types.Frame"),
        "K of strings": (Frame(T, depth=d, K=np.array([["a"] * 3] * 3)), "K must be a numeric"),
        "K last row": (Frame(T, depth=d, K=Kr), "pinhole"),
        "skewed K": (Frame(T, depth=d, K=K + np.array([[0, 5.0, 0], [0, 0, 0], [0, 0, 0]])), "skew"),
        "depth scale string": (Frame(T, depth=(d * 1000).astype(np.uint16), K=K, depth_scale="1000"), "depth_scale"),
        "pose beyond the key range": (Frame(Tfar, depth=d, rgb=c, K=K), "outside"),
        "pose beyond the key range lidar": (Frame(Tfar, points=pts), "outside"),
        "non-finite pose": (Frame(Tn, depth=d, rgb=c, K=K), "non-finite"),
        "inf in pose": (Frame(Ti, points=pts), "non-finite"),
        "scaled rotation": (Frame(Ts, depth=d, rgb=c, K=K), "not rigid"),
        "scaled rotation lidar": (Frame(Ts, points=pts), "not rigid"),
        "bad last row": (Frame(Tr, depth=d, K=K), "last row"),
        "pose 3x4": (Frame(T[:3], depth=d, rgb=c, K=K), "4x4"),
        "pose 4x4x1": (Frame(T[..., None], points=pts), "4x4"),
        "K 3x4": (Frame(T, depth=d, rgb=c, K=np.zeros((3, 4))), "K must be a 3x3"),
        "K 2x2": (Frame(T, depth=d, K=np.eye(2)), "K must be a 3x3"),
        "K missing": (Frame(T, depth=d), "intrinsics"),
        "negative focal": (Frame(T, depth=d, rgb=c, K=Kn), "fx, fy > 0"),
        "zero focal": (Frame(T, depth=d, rgb=c, K=Kz), "fx, fy > 0"),
        "focal overflowing float32": (Frame(T, depth=d, K=np.diag([1e39, 1e39, 1.0])), "in float32"),
        "rgb size": (Frame(T, depth=d, rgb=c[:-1], K=K), "rgb must have shape"),
        "rgb channels": (Frame(T, depth=d, rgb=c[..., :2], K=K), "rgb must have shape"),
        "rgb float": (Frame(T, depth=d, rgb=c.astype(np.float32), K=K), "rgb must be uint8"),
        "depth int32": (Frame(T, depth=(d * 1000).astype(np.int32), K=K), "depth must be uint16"),
        "depth float64": (Frame(T, depth=d.astype(np.float64), K=K), "depth must be uint16"),
        "depth 3-D": (Frame(T, depth=d[..., None], K=K), "2-D"),
        "depth empty": (Frame(T, depth=np.zeros((0, 0), np.float32), K=K), "empty"),
        "points (N, 4)": (Frame(T, points=np.zeros((10, 4), np.float32)), "shape \\(N, 3\\)"),
        "points 1-D": (Frame(T, points=np.zeros(9, np.float32)), "shape \\(N, 3\\)"),
        "points int32": (Frame(T, points=np.zeros((10, 3), np.int32)), "float32 or float64"),
        "points list": (Frame(T, points=[[1.0, 2.0, 3.0]]), "numpy array"),
        "neither": (Frame(T), "neither depth nor points"),
        # A good depth image with bad points: nothing of the frame may be integrated.
        "good depth, bad points": (Frame(T, depth=d, rgb=c, K=K, points=np.zeros((5, 2), np.float32)), "N, 3"),
        "bad depth scale": (Frame(T, depth=(d * 1000).astype(np.uint16), K=K, depth_scale=-1.0), "depth_scale"),
    }


@pytest.mark.parametrize("case", list(_bad_frames(np.zeros((2, 2), np.float32), np.zeros((2, 2, 3), np.uint8),
                                                   np.eye(4)).keys()))
def test_bad_input_raises_before_any_state_change(mapper_with_data, case):
    m, (d, c, T) = mapper_with_data
    frame, match = _bad_frames(d, c, T)[case]
    before = octree_state(m.octree)
    n_int = m.stats.frames_integrated
    with pytest.raises(ValueError, match=match) as info:
        m.integrate(frame)
    assert len(str(info.value)) > 15                       # says what was wrong
    assert_same_state(before, octree_state(m.octree))
    assert m.stats.frames_integrated == n_int and m.stats.frames_rejected == 1
    # The map still works afterwards.
    m.integrate(Frame(T, depth=d, rgb=c, K=SMALL_K))


def test_far_from_the_origin_torch_matches_cpp():
    """20 km out, LiDAR voxel coordinates leave the range of one Morton key: the torch path must
    still put the bricks where the compiled one does (it wrapped around once)."""
    pytest.importorskip("voxmap_ros.core.native")
    T = np.eye(4); T[:3, 3] = [2e4, -1.5e4, 3.0]
    pts = np.random.default_rng(1).normal(0, 3, (400, 3)).astype(np.float32)
    coords = {}
    for backend in ("torch", "cpp"):
        m = Mapper(make_config(0.05, map__backend=backend))
        if m.backend != backend:
            pytest.skip("compiled kernels unavailable")
        m.integrate(Frame(T, points=pts))
        c = m.octree.brick_coord[m.octree.alive_slots()]
        coords[backend] = set(map(tuple, c.tolist()))
    assert coords["torch"] == coords["cpp"] and len(coords["cpp"]) > 10
    centre = np.mean(list(coords["torch"]), axis=0) * 0.05 * 8
    np.testing.assert_allclose(centre[:2], T[:2, 3], atol=10.0)


def test_fortran_ordered_depth_is_accepted():
    rng = np.random.default_rng(2)
    d = rng.uniform(1.0, 2.0, (IMG_H, IMG_W)).astype(np.float32)
    results = []
    for arr in (d, np.asfortranarray(d)):
        m = Mapper(make_config(0.05, map__backend="auto"))
        m.integrate(Frame(np.eye(4), depth=arr, K=SMALL_K))
        results.append(m.octree.num_voxels)
    assert results[0] == results[1] > 0


def test_api_arguments_are_checked(mapper_with_data):
    m, _ = mapper_with_data
    n = m.octree.num_bricks
    for centre, radius, match in (([0, 0, 0], -1.0, "radius_m"), ([0, 0, 0], float("nan"), "radius_m"),
                                  ([0, 0], 5.0, "3 finite"), ("abc", 5.0, "numbers")):
        with pytest.raises(ValueError, match=match):
            m.clear_far(centre, radius)
    assert m.octree.num_bricks == n
    for level in (-1, 1.5, m.octree.levels + 1, True):
        with pytest.raises(ValueError, match="level"):
            m.occupied_points(level)
    top = m.occupied_points(m.octree.levels)[0]          # the coarsest level is a valid query too
    assert top.ndim == 2 and top.shape[1] == 3


def test_an_invalid_config_change_changes_nothing(mapper_with_data):
    m, _ = mapper_with_data
    before = (m.config, m.params)
    bad = make_config(0.05)
    bad.occupancy.clamp_min = 0.99                   # set behind validation's back: above clamp_max
    with pytest.raises(ValueError, match="clamp_min"):
        m.set_config(bad)
    assert (m.config, m.params) == before
    with pytest.raises(ValueError, match="prob_hit"):
        make_config(0.05, occupancy__prob_hit=1.0)   # log-odds of 1 is infinite


def test_empty_cloud_is_a_noop(mapper_with_data):
    m, (d, c, T) = mapper_with_data
    before = octree_state(m.octree)
    n_int, n_empty = m.stats.frames_integrated, m.stats.frames_empty
    assert m.integrate(Frame(T, points=np.zeros((0, 3), np.float32))) == 0
    assert m.integrate(Frame(T, points=np.full((4, 3), np.nan, np.float32))) == 0
    assert m.integrate(Frame(T, depth=np.full_like(d, np.nan), K=SMALL_K)) == 0
    assert (m.stats.frames_integrated, m.stats.frames_empty) == (n_int, n_empty + 3)
    assert_same_state(before, octree_state(m.octree))


def test_an_empty_frame_far_away_clears_nothing(indoor_data):
    """With a clearing radius, a frame without readings (an empty cloud, depth all NaN) at a pose
    100 m away neither drops bricks nor moves the clearing centre; the next real frame there does."""
    m = Mapper(make_config(VOXEL_M, map__clearing_radius_m=3.0))
    d, c, T = indoor_data.frames[0]
    m.integrate(Frame(T, depth=d, rgb=c, K=indoor_data.K))
    assert m.octree.num_bricks > 0
    before, centre = octree_state(m.octree), m.last_sensor_position_m.copy()
    far = T.copy(); far[0, 3] += 100.0
    assert m.integrate(Frame(far, points=np.zeros((0, 3), np.float32))) == 0
    assert m.integrate(Frame(far, depth=np.full_like(d, np.nan), K=indoor_data.K)) == 0
    assert_same_state(before, octree_state(m.octree))
    np.testing.assert_array_equal(m.last_sensor_position_m, centre)
    m.integrate(Frame(far, points=np.array([[2.0, 0.0, 0.0]], np.float32)))
    assert np.allclose(m.last_sensor_position_m, far[:3, 3])
    centres = (m.octree.brick_coord[m.octree.alive_slots()].double() + 0.5) * m.octree.brick_size_m
    assert bool(((centres - torch.from_numpy(far[:3, 3])).norm(dim=1) <= 3.0).all())


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_no_reading_is_no_surface_even_with_a_zero_min_range(indoor_data, backend):
    """Holes (0, NaN, inf, negative, uint16 0 / 65535) are 'no reading' whatever rgbd.min_range_m
    allows: a zero minimum must not fuse them as a surface at the camera."""
    d, c, T = indoor_data.frames[0]
    m = Mapper(make_config(VOXEL_M, rgbd__min_range_m=0.0, map__backend=backend))
    for depth in (np.zeros_like(d), np.full_like(d, np.nan), np.full_like(d, -1.0), np.full_like(d, np.inf),
                  np.zeros(d.shape, np.uint16), np.full(d.shape, 65535, np.uint16)):
        assert m.integrate(Frame(T, depth=depth, K=indoor_data.K)) == 0
    assert m.octree.num_bricks == 0 and m.stats.frames_empty == 6
    holes = d.copy()
    holes[::3] = np.nan                               # a third of the rows without readings
    m.integrate(Frame(T, depth=holes, K=indoor_data.K))
    z_cam = (m.extract_mesh().vertices - T[:3, 3]) @ T[:3, 2]        # depth along the optical axis
    assert z_cam.size and z_cam.min() > 0.9 * np.nanmin(d[d > 0])


# ------------------------------------------------------------------------------------ meshing
def _edge_use(tris: np.ndarray) -> Counter:
    e = np.sort(np.concatenate([tris[:, [0, 1]], tris[:, [1, 2]], tris[:, [2, 0]]]), axis=1)
    return Counter(map(tuple, e.tolist()))


def _analytic_sphere_mapper() -> Mapper:
    """A full sphere's TSDF written straight into the octree: every brick within the truncation
    distance of the surface, every voxel observed (weight 1)."""
    m = Mapper(make_config(SPHERE_VOXEL_M))
    o = m.octree
    trunc = m.params.trunc_m
    bs = o.brick_size_m
    lo = np.floor((SPHERE_CENTRE_M - SPHERE_RADIUS_M - trunc) / bs).astype(int)
    hi = np.floor((SPHERE_CENTRE_M + SPHERE_RADIUS_M + trunc) / bs).astype(int)
    grid = np.stack(np.meshgrid(*[np.arange(a, b + 1) for a, b in zip(lo, hi)], indexing="ij"), -1).reshape(-1, 3)
    centre = (grid + 0.5) * bs
    r = np.linalg.norm(centre - SPHERE_CENTRE_M, axis=1)
    half_diag = math.sqrt(3) / 2 * bs
    keep = np.abs(r - SPHERE_RADIUS_M) <= trunc + half_diag
    slots, _ = o.allocate_bricks(torch.from_numpy(grid[keep]))
    p = o.voxel_centers(slots).double()
    sdf = ((p - torch.from_numpy(SPHERE_CENTRE_M)).norm(dim=-1) - SPHERE_RADIUS_M) / trunc
    o.attrs["tsdf"][slots] = sdf.clamp(-1, 1).half()
    o.attrs["weight"][slots] = 1.0
    o.attrs["color"][slots] = torch.tensor([10, 200, 30], dtype=torch.uint8)
    o.brick_dirty[slots] = True
    return m


def test_analytic_sphere_mesh_is_watertight_and_accurate():
    m = _analytic_sphere_mapper()
    assert m.octree.num_bricks > 60                        # spans many bricks
    mesh = m.extract_mesh()
    assert len(mesh.triangles) > 2000
    uses = _edge_use(mesh.triangles)
    bad = {e: n for e, n in uses.items() if n != 2}
    assert not bad, f"{len(bad)} edges not shared by exactly two triangles (cracks or overlaps)"
    V, E, F = len(mesh.vertices), len(uses), len(mesh.triangles)
    assert V - E + F == 2                                 # one closed genus-0 surface
    r = np.linalg.norm(mesh.vertices - SPHERE_CENTRE_M, axis=1)
    assert np.abs(r - SPHERE_RADIUS_M).max() < SPHERE_TOL_M
    # Outward orientation: the signed volume is that of the sphere (4/3 pi r^3), not negative.
    v = mesh.vertices[mesh.triangles].astype(np.float64) - SPHERE_CENTRE_M
    vol = np.einsum("ij,ij->i", v[:, 0], np.cross(v[:, 1], v[:, 2])).sum() / 6
    assert vol == pytest.approx(4 / 3 * math.pi * SPHERE_RADIUS_M ** 3, rel=0.02)
    assert (mesh.colors == [10, 200, 30]).all()


def test_fused_sphere_mesh_is_manifold_inside_the_observed_region():
    """Depth images of a sphere from 6 directions: away from the edge of the observed surface
    every mesh edge is shared by exactly two triangles (no cracks between bricks)."""
    radius = 0.35
    sphere = sphere_mesh((0.05, -0.02, 1.0), radius, (90, 90, 220), n_lat=48, n_lon=96)
    # A room around it: every pixel has a depth reading, so the space beyond the sphere's
    # silhouette is observed free (no reading means unknown, which would leave real holes).
    sphere = Scene.merge([sphere, box_mesh((0.0, 0.0, 1.0), (5.0, 5.0, 5.0), (200, 200, 200))])
    m = Mapper(make_config(0.02))
    c0 = np.array([0.05, -0.02, 1.0])
    for eye in ([1.3, 0, 1.0], [-1.3, 0, 1.0], [0, 1.3, 1.0], [0, -1.3, 1.0], [0.01, 0.0, 2.3], [0.01, 0.0, -0.3]):
        T = look_at(c0 + np.array(eye) - [0, 0, 1.0], c0, up=(0, 1, 0) if abs(eye[0]) < 0.1 and abs(eye[1]) < 0.1 else (0, 0, 1))
        d, c, _ = render_rgbd(sphere, SMALL_K, T, IMG_W, IMG_H)
        m.integrate(Frame(T, depth=d, rgb=c, K=SMALL_K))
    mesh = m.extract_mesh()
    near = np.linalg.norm(mesh.vertices - c0, axis=1) < 1.0          # the sphere, not the room
    keep = near[mesh.triangles].all(1)
    assert near[mesh.triangles].any(1).sum() == keep.sum()          # a separate component
    uses = _edge_use(mesh.triangles[keep])
    assert keep.sum() > 1000
    bad = [e for e, n in uses.items() if n != 2]
    # Seen from all six sides, the sphere is closed: no boundary at all.
    assert not bad, f"{len(bad)} open or over-shared edges"
    r = np.linalg.norm(mesh.vertices[near] - c0, axis=1)
    assert np.abs(r - radius).max() < 0.5 * 0.02 + 0.01    # half a voxel + faceting of the GT mesh


def _tri_set(vertices, triangles):
    """Orientation-preserving canonical triangle set with rounded coordinates."""
    v = np.round(vertices.astype(np.float64), VERTEX_DECIMALS)
    out = []
    for t in triangles:
        p = [tuple(v[i]) for i in t]
        k = min(range(3), key=lambda i: p[i])
        out.append(tuple(p[k:] + p[:k]))
    return Counter(out)


def _store_equals_full(m: Mapper):
    store = m.mesh_store().to_mesh()
    full = m.extract_mesh()
    a, b = _tri_set(store.vertices, store.triangles), _tri_set(full.vertices, full.triangles)
    assert a == b, f"incremental {sum(a.values())} vs full {sum(b.values())} triangles, " \
                   f"{sum((a - b).values())} extra, {sum((b - a).values())} missing"
    return len(full.triangles)


def test_incremental_mesh_equals_full_extraction(indoor_data):
    m = Mapper(make_config(VOXEL_M))
    sizes = []
    for i, (d, c, T) in enumerate(indoor_data.frames[:6]):
        m.integrate(Frame(T, depth=d, rgb=c, K=indoor_data.K))
        upd = m.update_mesh()
        assert upd.remeshed_keys.numel() > 0
        if i in (0, 2, 5):
            sizes.append(_store_equals_full(m))
    assert sizes[-1] > sizes[0] > 100
    # Nothing changed since the last call: nothing re-meshed.
    upd = m.update_mesh()
    assert upd.remeshed_keys.numel() == 0 and upd.removed_keys.numel() == 0
    _store_equals_full(m)


def test_a_map_never_meshed_keeps_no_removal_list_and_meshes_right_later(indoor_data):
    """A node that publishes no mesh: bricks dropped by clearing are not remembered for a mesh
    update that never comes (the list grew for ever), and a first mesh update later is still
    the full extraction. Summary notes stay bounded without queries too."""
    m = Mapper(make_config(VOXEL_M))
    for d, c, T in indoor_data.frames[:4]:
        m.integrate(Frame(T, depth=d, rgb=c, K=indoor_data.K))
    assert m.clear_far(indoor_data.frames[0][2][:3, 3], 2.0) > 0
    assert m._removed_since_mesh == []
    m.update_mesh()
    _store_equals_full(m)
    o = m.octree
    slots = o.alive_slots()
    for _ in range(1000):
        o.mark_stale(slots[:50])
    assert int(o.brick_stale.sum()) == slots[:50].numel() > 0     # one bit per brick, however often noted
    o.flush_summaries()
    assert not o.summaries_pending and not bool(o.brick_stale.any())


def test_mesh_store_drops_cleared_and_pruned_bricks(indoor_data):
    m = Mapper(make_config(VOXEL_M))
    for d, c, T in indoor_data.frames[:4]:
        m.integrate(Frame(T, depth=d, rgb=c, K=indoor_data.K))
    m.update_mesh()
    n_before = _store_equals_full(m)
    centre = indoor_data.frames[0][2][:3, 3]
    dropped = m.clear_far(centre, 2.0)
    assert dropped > 0
    upd = m.update_mesh()
    assert upd.removed_keys.numel() == dropped
    alive_keys = set(m.octree.node_key[m.octree.brick_node[m.octree.alive_slots()].long()].tolist())
    assert set(m.mesh_store().tri_brick_keys.tolist()) <= alive_keys
    assert not (set(upd.removed_keys.tolist()) & set(m.mesh_store().tri_brick_keys.tolist()))
    n_after = _store_equals_full(m)
    assert 0 < n_after < n_before
    # Prune: free bricks go away; the store follows.
    for d, c, T in indoor_data.frames[4:8]:
        m.integrate(Frame(T, depth=d, rgb=c, K=indoor_data.K))
    m.update_mesh()
    # Make a few bricks confidently free so that something is pruned.
    o = m.octree
    slots = o.alive_slots()
    free = slots[(o.attrs["tsdf"][slots].float() >= 0.999).all(1)][:10]
    o.attrs["occ"][free] = m.params.l_min
    n_pruned = m.prune()
    assert n_pruned >= free.numel() > 0
    upd = m.update_mesh()
    assert upd.removed_keys.numel() == n_pruned
    _store_equals_full(m)


def test_clear_resets_map_and_mesh(indoor_data):
    m = Mapper(make_config(VOXEL_M))
    d, c, T = indoor_data.frames[0]
    m.integrate(Frame(T, depth=d, rgb=c, K=indoor_data.K))
    m.update_mesh()
    m.clear()
    assert m.octree.num_bricks == 0
    upd = m.update_mesh()
    assert upd.removed_keys.numel() > 0 and m.mesh_store().tri_vertices.shape[0] == 0


def test_clearing_radius_from_config(indoor_data):
    radius = 2.5
    m = Mapper(make_config(VOXEL_M, map__clearing_radius_m=radius))
    ref = Mapper(make_config(VOXEL_M))
    for d, c, T in indoor_data.frames[:3]:
        m.integrate(Frame(T, depth=d, rgb=c, K=indoor_data.K))
        ref.integrate(Frame(T, depth=d, rgb=c, K=indoor_data.K))
    o = m.octree
    centres = (o.brick_coord[o.alive_slots()].double() + 0.5) * o.brick_size_m
    pos = torch.from_numpy(indoor_data.frames[2][2][:3, 3])
    assert o.num_bricks > 0 and float((centres - pos).norm(dim=1).max()) <= radius
    assert o.num_bricks < ref.octree.num_bricks


def test_summary_and_backend(indoor_data):
    m = Mapper(make_config(VOXEL_M))
    assert m.backend == "torch"
    d, c, T = indoor_data.frames[0]
    m.integrate(Frame(T, depth=d, rgb=c, K=indoor_data.K))
    s = m.summary()
    assert s["frames_integrated"] == 1 and s["bricks"] == m.octree.num_bricks
    assert s["voxels"] == s["bricks"] * BRICK ** 3 and s["map_bytes"] == m.octree.nbytes
    assert s["ms_per_frame_median"] > 0
    cfg = make_config(VOXEL_M)
    cfg.map.backend = "auto"
    assert Mapper(cfg).backend in ("torch", "cpp")
    cfg.map.device = "cuda"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="cuda"):
            Mapper(cfg)


def test_lidar_and_rgbd_in_one_frame(indoor_data, indoor_scene):
    d, c, T = indoor_data.frames[0]
    pts = scan_lidar(indoor_scene, T, beams=8, hfov_samples=128)
    both = Mapper(make_config(VOXEL_M))
    both.integrate(Frame(T, depth=d, rgb=c, K=indoor_data.K, points=pts))
    seq = Mapper(make_config(VOXEL_M))
    seq.integrate(Frame(T, depth=d, rgb=c, K=indoor_data.K))
    seq.integrate(Frame(T, points=pts))
    assert both.octree.num_bricks == seq.octree.num_bricks
    a, b = octree_state(both.octree), octree_state(seq.octree)
    assert torch.equal(a["attr_occ"], b["attr_occ"])


def _summaries_by_key(octree) -> dict:
    keys, ids = octree.table.items()
    order = torch.argsort(keys)
    keys, ids = keys[order], ids[order].long()
    return {"keys": keys, "max_occ": octree.node_max_occ[ids], "min_tsdf": octree.node_min_abs_tsdf[ids],
            "observed": octree.node_observed[ids], "free_mask": octree.node_free_mask[ids]}


def test_stale_marks_on_erased_bricks_change_nothing(indoor_data):
    """A note on a brick that is gone by the flush (erased, its slot not reused) is dropped: the
    tree equals one that never had the note."""
    a, b = Mapper(make_config(0.05)), Mapper(make_config(0.05))
    d, c, T = indoor_data.frames[0]
    for m in (a, b):
        m.integrate(Frame(T, depth=d, rgb=c, K=indoor_data.K))
        m.octree.flush_summaries()
        m._erase(m.octree.alive_slots()[:20])
    gone = torch.nonzero(~a.octree.brick_alive[:a.octree.alive_slots().max()]).squeeze(1)[:20]
    assert gone.numel() == 20
    a.octree.mark_stale(gone)
    a.octree.mark_parents_stale(gone)
    a.octree.flush_summaries()
    got, want = _summaries_by_key(a.octree), _summaries_by_key(b.octree)
    for k in want:
        assert torch.equal(got[k], want[k]), k


def test_lazy_summaries_equal_eager_ones(indoor_data):
    """Mapper.integrate only marks bricks stale; the first query refreshes them. The result must
    be the tree an eager refresh after every frame builds (same nodes, same summaries)."""
    lazy, eager = Mapper(make_config(0.05)), Mapper(make_config(0.05))
    for d, c, T in indoor_data.frames[:5]:
        for m in (lazy, eager):
            m.integrate(Frame(T, depth=d, rgb=c, K=indoor_data.K))
        eager.octree.flush_summaries()
        assert not eager.octree.summaries_pending
    assert lazy.octree.summaries_pending and bool(lazy.octree.brick_stale.any()), "integration defers the refresh"
    a, b = _summaries_by_key(lazy.octree), _summaries_by_key(eager.octree)   # items() does not flush
    assert a["keys"].numel() < b["keys"].numel(), "parents of the lazy map do not exist yet"
    lazy.octree.flush_summaries()
    a = _summaries_by_key(lazy.octree)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # Queries flush on their own: occupancy at a parent level sees the fused surface.
    fresh = Mapper(make_config(0.05))
    d, c, T = indoor_data.frames[0]
    fresh.integrate(Frame(T, depth=d, rgb=c, K=indoor_data.K))
    pts, _ = fresh.occupied_points(level=2)
    assert len(pts) > 0 and not fresh.octree.summaries_pending


def test_lidar_kernel_summaries_equal_a_full_refresh(indoor_data, indoor_scene):
    """The compiled LiDAR path refreshes its bricks' own summaries inside the kernel and leaves
    only their ancestors for the lazy flush; frames mixing RGB-D and LiDAR bricks, flushed now
    and then, must end with the tree that a refresh of every brick from scratch gives."""
    from voxmap_ros.core import native
    if not native.available():
        pytest.skip(f"compiled kernels unavailable: {native.unavailable_reason()}")
    m = Mapper(make_config(0.05, map__backend="cpp", map__reserve_bricks=0))
    o = m.octree
    for i, (d, c, T) in enumerate(indoor_data.frames[:6]):
        pts = scan_lidar(indoor_scene, T, beams=8, hfov_samples=128)
        pending, n_fresh = o.summaries_pending, int(o.brick_stale_parents.sum())
        m.integrate(Frame(T, depth=d if i % 2 else None, rgb=c if i % 2 else None, K=indoor_data.K, points=pts))
        # Right after a query the kernels write the bricks' own summaries (only ancestors wait);
        # with notes still pending, nothing read them: the refresh is left to the next query.
        assert (int(o.brick_stale_parents.sum()) > n_fresh) == (not pending), i
        if i == 2:
            o.flush_summaries()
    assert bool(o.brick_stale_parents.any()) and bool(o.brick_stale.any()), "both kinds of notes were taken"
    m.octree.flush_summaries()
    got = _summaries_by_key(m.octree)
    m.octree.update_summaries(m.octree.alive_slots())
    want = _summaries_by_key(m.octree)
    for k in want:
        assert torch.equal(got[k], want[k]), k


def test_reserve_bricks_reaches_every_octree_the_mapper_makes(tmp_path):
    cfg = make_config(VOXEL_M)
    want = 4 * cfg.map.initial_bricks
    cfg.map.reserve_bricks = want
    m = Mapper(cfg)
    assert m.octree.reserve_bricks == want
    m.clear()
    assert m.octree.reserve_bricks == want
    m.save(tmp_path / "map.vxm")
    assert Mapper.load(tmp_path / "map.vxm").octree.reserve_bricks == want
    assert Mapper.load(tmp_path / "map.vxm", reserve_bricks=0).octree.reserve_bricks == 0   # this host's choice
    cfg.map.reserve_bricks = 0
    assert Mapper(cfg).octree.reserve_bricks == 0


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_frame_with_depth_and_a_scan_beyond_the_key_range_changes_nothing(backend):
    """The RGB-D part of a frame is valid, its LiDAR part reaches past the key range: the frame is
    rejected as a whole, before its depth is fused."""
    from voxmap_ros.core import native
    if backend == "cpp" and not native.available():
        pytest.skip(f"compiled kernels unavailable: {native.unavailable_reason()}")
    m = Mapper(make_config(0.01, map__backend=backend, map__reserve_bricks=0))
    edge_m = (morton.COORD_MAX + 1) * BRICK * 0.01
    T = np.eye(4)
    T[0, 3] = edge_m - 5.0                              # 5 m inside the +x edge of the key range
    K = np.array([[30.0, 0, 16], [0, 30.0, 12], [0, 0, 1]])
    depth = np.full((24, 32), 1.0, np.float32)          # a wall 1 m ahead (+z): well inside
    before = octree_state(m.octree)
    with pytest.raises(ValueError, match="key range"):
        m.integrate(Frame(T, depth=depth, K=K, points=np.array([[10.0, 0, 0]], np.float32)))
    assert_same_state(before, octree_state(m.octree))
    assert m.stats.frames_rejected == 1 and m.stats.frames_integrated == 0
    # Each part alone: the depth is fused, the scan refused.
    assert m.integrate(Frame(T, depth=depth, K=K)) > 0
    with pytest.raises(ValueError):
        m.integrate(Frame(T, points=np.array([[10.0, 0, 0]], np.float32)))


def _shell_scan(radius_m: float = 0.15, n: int = 2000) -> np.ndarray:
    d = np.random.default_rng(0).normal(size=(n, 3))
    return (d / np.linalg.norm(d, axis=1, keepdims=True) * radius_m).astype(np.float32)


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_bricks_beyond_the_mesh_range_and_at_the_map_edge_do_not_break_meshing(backend):
    """The weld's edge keys reach +-2^19 voxels, the octree 4x farther: bricks beyond are left out
    of the mesh (counted in the summary), the rest is meshed as without them, on both mesh paths;
    bricks at the very edge of the key range (whose neighbours are outside it) are no error."""
    from voxmap_ros.core import native
    from voxmap_ros.core.marching_cubes import KEY_COORD_MAX
    if backend == "cpp" and not native.available():
        pytest.skip(f"compiled kernels unavailable: {native.unavailable_reason()}")
    cfg = make_config(0.01, map__backend=backend, map__reserve_bricks=0, lidar__min_range_m=0.0)
    near, both = Mapper(cfg), Mapper(cfg)
    T_near, T_far, T_edge = np.eye(4), np.eye(4), np.eye(4)
    T_far[0, 3] = (KEY_COORD_MAX + 1000) * 0.01                       # ~5.25 km: beyond the mesh range
    T_edge[0, 3] = (morton.COORD_MAX + 1) * BRICK * 0.01 - 0.2        # 20 cm inside the key range
    for m, poses in ((near, [T_near]), (both, [T_near, T_far, T_edge])):
        for T in poses:
            m.integrate(Frame(T, points=_shell_scan()))
    a, b = near.extract_mesh(), both.extract_mesh()
    assert both.summary()["bricks_beyond_mesh_range"] > 0 and near.summary()["bricks_beyond_mesh_range"] == 0
    assert len(a.triangles) > 100
    assert torch.equal(torch.as_tensor(a.vertices), torch.as_tensor(b.vertices))
    assert both.update_mesh().mesh.tri_vertices.shape[0] == near.update_mesh().mesh.tri_vertices.shape[0]


def test_a_failed_mesh_update_keeps_the_changes_for_the_next_one(monkeypatch):
    from voxmap_ros.core import mesh as mesh_mod
    m = Mapper(make_config(0.01, lidar__min_range_m=0.0))
    m.integrate(Frame(np.eye(4), points=_shell_scan()))
    real = mesh_mod.gather
    monkeypatch.setattr(mesh_mod, "gather", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("out of memory")))
    with pytest.raises(RuntimeError):
        m.update_mesh()
    monkeypatch.setattr(mesh_mod, "gather", real)
    assert m.update_mesh().mesh.tri_vertices.shape[0] > 100
    assert m.mesh_store().tri_vertices.shape[0] == len(m.extract_mesh().triangles) > 0


# ------------------------------------------------------------------------------ config changes
@pytest.mark.parametrize("name, value", [("tsdf.min_weight_mesh", 3.0), ("tsdf.mesh_max_jump_vox", 2.0)])
def test_a_mesh_setting_changed_at_run_time_reaches_the_incremental_mesh(indoor_data, name, value):
    import copy
    m = Mapper(make_config(VOXEL_M))
    for d, c, T in indoor_data.frames[:2]:
        m.integrate(Frame(T, depth=d, rgb=c, K=indoor_data.K))
    m.update_mesh()
    before = _store_equals_full(m)
    new = copy.deepcopy(m.config)
    new.set(name, value)
    m.set_config(new)
    m.update_mesh()
    assert _store_equals_full(m) < before          # the setting removes triangles, from the store too


@pytest.mark.parametrize("name, value", [("map.voxel_size_m", 0.1), ("map.backend", "cpp"),
                                         ("tsdf.trunc_vox", 3.0), ("rgbd.pixel_lookup", "floor")])
def test_a_config_change_beyond_runtime_parameters_is_refused(mapper_with_data, name, value):
    """The map's voxels, kernels and stored TSDF were made with these: a change would misread them."""
    import copy
    m, _ = mapper_with_data
    before = (copy.deepcopy(m.config), m.params)
    new = copy.deepcopy(m.config)
    new.set(name, value)
    with pytest.raises(ValueError, match=f"{name} cannot change"):
        m.set_config(new)
    assert (m.config, m.params) == before


def test_pruned_free_space_follows_a_changed_lower_clamp(mapper_with_data):
    import copy
    m, _ = mapper_with_data
    new = copy.deepcopy(m.config)
    new.occupancy.clamp_min = 0.4
    m.set_config(new)
    assert m.octree.free_logodds == pytest.approx(math.log(0.4 / 0.6))
    assert m.octree.free_logodds == m.params.l_min


def test_loading_a_map_with_a_config_keeps_what_the_file_fixes(mapper_with_data, tmp_path):
    """A node's parameters apply to a loaded map, but for the voxel size, levels, truncation and frame."""
    from voxmap_ros.core.mapper import MAP_FILE_FIELDS, map_file_overrides
    m, _ = mapper_with_data
    m.save(tmp_path / "map.npz")
    node_cfg = make_config(2 * VOXEL_M, tsdf__max_weight=17.0, tsdf__trunc_vox=3.0, map__octree_levels=5,
                           map__frame_id="odom", rgbd__max_range_m=2.5)
    loaded = Mapper.load(tmp_path / "map.npz", config=node_cfg)
    for name in MAP_FILE_FIELDS:
        assert loaded.config.get(name) == m.config.get(name), name
    assert loaded.config.tsdf.max_weight == 17.0 and loaded.config.rgbd.max_range_m == 2.5
    assert loaded.params.max_weight == 17.0
    assert len(map_file_overrides(node_cfg, loaded.config)) == 4
    mesh = loaded.extract_mesh()
    loaded.update_mesh()
    assert len(loaded.mesh_store().to_mesh().triangles) == len(mesh.triangles) > 0


def test_frame_times_cover_every_frame_in_bounded_memory(monkeypatch):
    """A node integrates for weeks: the per-frame times the summary reports must cover every frame
    without a list that grows with them (exact while few, then 0.5 % log bins)."""
    from voxmap_ros.core.mapper import FrameTimes
    monkeypatch.setattr(FrameTimes, "EXACT_MAX", 1000)
    t = FrameTimes()
    assert t.quantile(0.5) is None
    rng = np.random.default_rng(0)
    few = rng.uniform(1.0, 3.0, 999)
    for x in few:
        t.append(x)
    assert t.quantile(0.5) == pytest.approx(float(np.median(few)), rel=1e-12)
    many = np.concatenate([few, rng.uniform(10.0, 30.0, 3001)])      # the early frames are 1/4
    for x in many[999:]:
        t.append(x)
    assert t.count == 4000 and len(t._exact) == 0 and t._hist.size == FrameTimes.HIST_BINS
    for q in (0.1, 0.5, 0.95):
        assert t.quantile(q) == pytest.approx(float(np.quantile(many, q)), rel=0.005), q


def test_poses_that_numpy_cannot_read_are_value_errors():
    """A pose numpy cannot turn into an array (a tensor that requires grad, as a CUDA tensor would
    be too; ragged lists) is a ValueError naming the pose, like every other bad pose."""
    from voxmap_ros.core.frames import check_pose
    for bad in (torch.eye(4, dtype=torch.float64, requires_grad=True), [[1, 0, 0, 0], [0, 1]]):
        with pytest.raises(ValueError, match="T_W_S must be a 4x4 matrix on the host"):
            check_pose(bad)
