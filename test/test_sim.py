"""Synthetic scenes and sensor simulators: reproducibility, labels, analytic depth, LiDAR hits."""
import numpy as np
import open3d as o3d
import pytest

from voxmap_ros.sim import (LABEL_IDS, Scene, box_mesh, indoor_camera_trajectory, kinect_depth_sigma_m,
                            lidar_trajectory, look_at, make_scene, plane_mesh, render_rgbd, scan_lidar)
from voxmap_ros.sim.dataset_writer import default_intrinsics

DEPTH_TOL_M = 1e-4            # float32 ray casting of a fronto-parallel plane a few metres away
SURFACE_TOL_M = 1e-3          # LiDAR points (float32, sensor frame) back in the world vs the mesh
POSE_TOL = 1e-9               # orthonormality of generated rotations
NOISE_STD_REL_TOL = 0.1       # sample std of 76,800 noisy depths vs the model sigma
W, H = 320, 240
K = default_intrinsics(W, H)


def _same(a: Scene, b: Scene) -> bool:
    return all(np.array_equal(getattr(a, f), getattr(b, f))
               for f in ("vertices", "triangles", "colors", "labels", "object_ids"))


@pytest.mark.parametrize("kind", ["indoor", "outdoor"])
def test_scene_reproducible_by_seed(kind):
    assert _same(make_scene(kind, 3), make_scene(kind, 3))
    assert not _same(make_scene(kind, 3), make_scene(kind, 4))


@pytest.mark.parametrize("kind", ["indoor", "outdoor"])
def test_scene_labels_and_sizes(kind):
    s = make_scene(kind, 0)
    assert s.vertices.dtype == np.float32 and s.triangles.dtype == np.int64
    assert s.colors.dtype == np.uint8 and s.labels.dtype == np.int32
    assert len(s.labels) == len(s.triangles) == len(s.object_ids) and 0 < len(s) < 200_000
    assert set(np.unique(s.labels)) <= set(s.label_names)
    assert set(np.unique(s.object_ids)) == set(s.object_names)
    assert s.bounds.shape == (2, 3)
    extent = s.bounds[1] - s.bounds[0]
    if kind == "indoor":
        np.testing.assert_allclose(extent, [6.0, 5.0, 2.6], atol=1e-5)
        assert {"floor", "wall", "ceiling", "furniture", "thin_structure"} <= set(s.label_names.values())
        assert {"thin_board", "thin_pole", "ball", "bin"} <= set(s.object_names.values())
        board = s.object_bounds("thin_board")
        assert min(board[1] - board[0]) == pytest.approx(0.02, abs=1e-6)
    else:
        np.testing.assert_allclose(extent[:2], [40.0, 20.0], atol=1e-5)
        assert {"road", "building", "pole", "car"} <= set(s.label_names.values())
    # Surfaces are textured: many distinct colours, not one.
    assert len(np.unique(s.triangle_colors, axis=0)) > 10


def test_remove_object_and_label():
    s = make_scene("indoor", 0)
    n_ball = int(np.sum(s.object_ids == [i for i, n in s.object_names.items() if n == "ball"][0]))
    t = s.without_object("ball")
    assert len(t) == len(s) - n_ball and "ball" not in t.object_names.values()
    assert t.triangles.max() < len(t.vertices)
    assert not np.any(s.without_label(LABEL_IDS["furniture"]).labels == LABEL_IDS["furniture"])
    with pytest.raises(ValueError, match="no object named"):
        s.without_object("unicorn")


def test_primitives_are_closed_with_outward_normals():
    box = box_mesh((1, 2, 0.5), (1.0, 2.0, 3.0), (255, 0, 0), yaw_rad=0.4)
    v, t = box.vertices.astype(np.float64), box.triangles
    signed_volume = np.einsum("ij,ij->i", v[t[:, 0]], np.cross(v[t[:, 1]], v[t[:, 2]])).sum() / 6
    assert signed_volume == pytest.approx(6.0, rel=1e-5)


def test_look_at_optical_convention():
    T = look_at((0, 0, 1), (5, 0, 1))
    R = T[:3, :3]
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=POSE_TOL)
    assert np.linalg.det(R) == pytest.approx(1.0)
    np.testing.assert_allclose(R[:, 2], [1, 0, 0], atol=POSE_TOL)      # z forward
    np.testing.assert_allclose(R[:, 0], [0, -1, 0], atol=POSE_TOL)     # x right (world -y when facing +x)
    np.testing.assert_allclose(R[:, 1], [0, 0, -1], atol=POSE_TOL)     # y down
    with pytest.raises(ValueError):
        look_at((0, 0, 0), (0, 0, 1))


def test_depth_of_fronto_parallel_wall_is_analytic():
    wall_x_m = 3.0
    wall = plane_mesh((wall_x_m, -5, -5), (0, 0, 10), (0, 10, 0), (10, 200, 30), label=LABEL_IDS["wall"])
    T_W_C = look_at((0.0, 0.3, 1.0), (10.0, 0.3, 1.0))
    depth, rgb, labels = render_rgbd(wall, K, T_W_C, W, H)
    assert depth.shape == (H, W) and depth.dtype == np.float32
    # z-depth, not ray length: every pixel of a fronto-parallel plane has the same depth.
    np.testing.assert_allclose(depth, wall_x_m, atol=DEPTH_TOL_M)
    assert np.all(rgb == [10, 200, 30]) and np.all(labels == LABEL_IDS["wall"])


def test_room_wall_depth_and_image_orientation():
    room = make_scene("indoor", 0)
    eye = np.array([0.0, 0.0, 1.3])
    T_W_C = look_at(eye, (1, 0, 1.0))                         # facing the east wall (x = 3 m), pitched down
    depth, _, labels = render_rgbd(room, K, T_W_C, W, H)
    wall = labels == LABEL_IDS["wall"]
    assert wall.mean() > 0.2
    # Only the east wall is in view. The ray through pixel (u, v) is eye + z * R @ d_C with
    # d_C = ((u - cx) / fx, (v - cy) / fy, 1), so it meets x = 3 at z-depth (3 - eye_x) / (R @ d_C)_x.
    v, u = np.nonzero(wall)
    d_C = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones(len(u))], 1)
    z_expected = (3.0 - eye[0]) / (d_C @ T_W_C[:3, :3].T)[:, 0]
    np.testing.assert_allclose(depth[v, u], z_expected, atol=DEPTH_TOL_M)
    assert np.ptp(z_expected) > 0.1                           # a tilted view: depth is not constant
    # y down: the floor is in the bottom half of the image, the ceiling in the top half.
    rows = np.arange(H)[:, None] * np.ones((1, W))
    assert rows[labels == LABEL_IDS["floor"]].min() > K[1, 2]
    assert not np.any(labels == LABEL_IDS["ceiling"])


def test_image_x_points_right():
    # Facing +x with z up, world -y is on the camera's right.
    marker = box_mesh((4, -1, 1), (0.2, 0.2, 0.2), (255, 0, 0), label=LABEL_IDS["object"])
    _, _, labels = render_rgbd(marker, K, look_at((0, 0, 1), (4, 0, 1)), W, H)
    cols = np.nonzero(labels == LABEL_IDS["object"])[1]
    assert len(cols) > 0 and cols.min() > K[0, 2]


def test_depth_noise_matches_model():
    wall = plane_mesh((2.0, -5, -5), (0, 0, 10), (0, 10, 0), (0, 0, 0))
    depth, _, _ = render_rgbd(wall, K, look_at((0, 0, 0), (1, 0, 0)), W, H, depth_noise=True,
                              rng=np.random.default_rng(0))
    assert np.std(depth) == pytest.approx(kinect_depth_sigma_m(2.0), rel=NOISE_STD_REL_TOL)
    assert np.mean(depth) == pytest.approx(2.0, abs=1e-3)


def _world_distance(scene, points_L, T_W_L):
    rc = o3d.t.geometry.RaycastingScene()
    rc.add_triangles(o3d.core.Tensor(scene.vertices), o3d.core.Tensor(scene.triangles.astype(np.uint32)))
    p_W = points_L.astype(np.float64) @ T_W_L[:3, :3].T + T_W_L[:3, 3]
    return rc.compute_distance(o3d.core.Tensor(p_W.astype(np.float32))).numpy()


@pytest.mark.parametrize("kind", ["indoor", "outdoor"])
def test_lidar_points_lie_on_surface(kind):
    scene = make_scene(kind, 1)
    for T_W_L in lidar_trajectory(scene, 3, seed=1):
        pts = scan_lidar(scene, T_W_L, beams=16, hfov_samples=512)
        assert pts.dtype == np.float32 and pts.ndim == 2 and pts.shape[1] == 3
        assert 0 < len(pts) <= 16 * 512
        assert _world_distance(scene, pts, T_W_L).max() < SURFACE_TOL_M


def test_lidar_max_range_and_noise():
    scene = make_scene("outdoor", 0)
    T_W_L = lidar_trajectory(scene, 5, seed=0)[2]
    full = scan_lidar(scene, T_W_L, max_range_m=100.0)
    near = scan_lidar(scene, T_W_L, max_range_m=8.0)
    assert len(near) < len(full)
    assert np.linalg.norm(near, axis=1).max() <= 8.0 + 1e-4
    noisy = scan_lidar(scene, T_W_L, noise_std_m=0.05, rng=np.random.default_rng(0))
    assert len(noisy) == len(full)
    assert 0.02 < np.std(np.linalg.norm(noisy, axis=1) - np.linalg.norm(full, axis=1)) < 0.08


def test_trajectories():
    room = make_scene("indoor", 2)
    poses = indoor_camera_trajectory(room, 30, seed=2)
    assert len(poses) == 30
    for T in poses:
        R = T[:3, :3]
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=POSE_TOL)
        assert 1.2 - 1e-9 <= T[2, 3] <= 1.6 + 1e-9
        assert R[2, 1] < 0                      # camera y (down) has a downward world component
        assert np.all(np.abs(T[:2, 3]) < [3, 2.5])
    # Inside a closed room every pixel sees a surface.
    depth, _, _ = render_rgbd(room, K, poses[7], W, H)
    assert (depth > 0).all()
    street = make_scene("outdoor", 2)
    lidar = lidar_trajectory(street, 10, seed=2)
    assert all(T[2, 3] == pytest.approx(1.8) for T in lidar)
    assert lidar[-1][0, 3] - lidar[0][0, 3] > 20          # drives along the street


def test_bad_inputs_raise():
    s = make_scene("indoor", 0)
    with pytest.raises(ValueError, match="unknown scene kind"):
        make_scene("moon", 0)
    with pytest.raises(ValueError, match="K must be"):
        render_rgbd(s, np.eye(2), np.eye(4), W, H)
    with pytest.raises(ValueError, match="T_W_C"):
        render_rgbd(s, K, np.eye(3), W, H)
