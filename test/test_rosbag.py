"""rosbag2 datasets: bag_writer -> BagDataset round trips in both storages, TF interpolation and
gaps, the PointCloud2 / Image decoders, and the real bags when present."""
from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from voxmap_ros.datasets.msg_decode import image_to_numpy, pointcloud2_to_xyz
from voxmap_ros.datasets.rosbag import BagDataset, is_bag, slerp
from voxmap_ros.sim.bag_writer import generate_bag, matrix_to_quaternion, write_bag
from voxmap_ros.sim.dataset_writer import default_intrinsics, depth_to_uint16

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
POSE_TOL = 1e-9              # written poses -> quaternion -> matrix, float64 all the way
INTERP_POSE_TOL = 1e-9       # slerp / lerp against the closed-form rotation about a fixed axis
REAL_POSE_TOL = 2e-4         # 7-Scenes rotations are orthonormal to ~1.8e-4 only; the bag stores quaternions
REAL_LIDAR_POSE_TOL = 1e-6   # the Livox bag stores float32-rounded translations
NS = 1_000_000_000
T0 = 1_700_000_000 * NS
W, H = 32, 24


def _rot(axis, angle_rad) -> np.ndarray:
    """Rodrigues: (3, 3) rotation by angle about axis."""
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    S = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(angle_rad) * S + (1 - np.cos(angle_rad)) * S @ S


def _pose(R, t) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, t
    return T


def _random_pose(rng) -> np.ndarray:
    return _pose(_rot(rng.normal(size=3), rng.uniform(-np.pi, np.pi)), rng.uniform(-3, 3, 3))


def _rgbd_frames(n, rng, with_rgb=True):
    out = []
    for _ in range(n):
        depth = rng.uniform(0.3, 6.0, (H, W)).astype(np.float32)
        depth[rng.random((H, W)) < 0.1] = 0                      # no reading
        rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8) if with_rgb else None
        out.append((depth, rgb, _random_pose(rng)))
    return out


def _scans(n, rng):
    return [(rng.normal(0, 5, (int(rng.integers(50, 200)), 3)).astype(np.float32), _random_pose(rng))
            for _ in range(n)]


# ---------------------------------------------------------------------------------------------
# Round trips

@pytest.mark.parametrize("storage,compress", [("sqlite3", "message"), ("mcap", False), ("mcap", "message"),
                                              ("sqlite3", "file")])
def test_round_trip(tmp_path, storage, compress):
    rng = np.random.default_rng(1)
    K = default_intrinsics(W, H)
    frames, scans = _rgbd_frames(5, rng), _scans(4, rng)
    rgbd_ns = [T0 + i * NS // 10 for i in range(5)]              # 10 Hz
    lidar_ns = [T0 + 15_000_000 + i * NS // 7 for i in range(4)]  # 7 Hz, offset: interleaved
    bag = write_bag(tmp_path / "bag", rgbd_frames=frames, K=K, lidar_scans=scans, storage=storage,
                    compress=compress, rgbd_stamps_ns=rgbd_ns, lidar_stamps_ns=lidar_ns)
    assert is_bag(bag)
    ds = BagDataset(bag)
    assert len(ds) == 9
    assert np.all(np.diff(ds.stamps_ns) >= 0)
    assert sorted(ds.stamps_ns.tolist()) == sorted(rgbd_ns + lidar_ns)
    s = ds.summary()
    assert s["storage"] == storage and s["map_frame"] == "map"
    assert s["frames"] == {"rgbd": 5, "lidar": 4, "total": 9}
    assert s["skipped"]["missing_tf"] == 0 and s["depth_without_color"] == 0
    assert s["topics"]["depth"] == "/camera/depth/image_raw" and s["topics"]["cloud"] == "/lidar/points"
    i_rgbd = i_lidar = 0
    for i in range(len(ds)):
        f = ds[i]
        assert f.stamp_ns == ds.stamps_ns[i]
        if f.is_rgbd:
            depth_m, rgb, T = frames[i_rgbd]
            assert f.stamp_ns == rgbd_ns[i_rgbd] and f.frame_id == "camera_optical"
            assert f.depth.dtype == np.uint16 and np.array_equal(f.depth, depth_to_uint16(depth_m))
            assert f.depth_scale == 1000.0
            assert f.rgb.dtype == np.uint8 and np.array_equal(f.rgb, rgb)
            assert np.array_equal(f.K, K)
            np.testing.assert_allclose(f.T_W_S, T, atol=POSE_TOL)
            i_rgbd += 1
        else:
            pts, T = scans[i_lidar]
            assert f.stamp_ns == lidar_ns[i_lidar] and f.frame_id == "lidar"
            assert f.points.dtype == np.float32 and np.array_equal(f.points, pts)
            np.testing.assert_allclose(f.T_W_S, T, atol=POSE_TOL)
            i_lidar += 1
    assert (i_rgbd, i_lidar) == (5, 4)
    ds.close()
    assert np.array_equal(ds[0].depth, depth_to_uint16(frames[0][0]))    # reopens lazily
    copy = pickle.loads(pickle.dumps(ds))                                  # e.g. for worker processes
    assert len(copy) == 9 and np.array_equal(copy[-1].points, ds[-1].points)


def test_float_depth_missing_color_and_single_file(tmp_path):
    rng = np.random.default_rng(2)
    frames = _rgbd_frames(3, rng)
    frames[1] = (frames[1][0], None, frames[1][2])                   # no colour for frame 1
    bag = write_bag(tmp_path / "bag", rgbd_frames=frames, K=default_intrinsics(W, H), storage="mcap",
                    depth_encoding="32FC1")
    for path in (bag, next(bag.glob("*.mcap"))):                      # directory and bare .mcap file
        assert is_bag(path)
        ds = BagDataset(path)
        assert len(ds) == 3 and ds.summary()["depth_without_color"] == 1   # 100 ms > pair tolerance
        f = ds[0]
        assert f.depth.dtype == np.float32 and np.array_equal(f.depth, frames[0][0])
        assert ds[1].rgb is None and np.array_equal(ds[2].rgb, frames[2][1])
        ds.close()
    assert not is_bag(tmp_path) and not is_bag(tmp_path / "nothing.db3")


def test_tf_interpolation_chain_and_static(tmp_path):
    """TF at 2.5 Hz (map -> base, dynamic) + /tf_static base -> camera; images at 10 Hz. A mid
    stamp gets the slerp of the bracketing samples, composed with the static edge."""
    rng = np.random.default_rng(3)
    frames = _rgbd_frames(9, rng)
    rgbd_ns = [T0 + i * NS // 10 for i in range(9)]
    axis, theta = np.array([0.3, -0.5, 0.8]), 1.2                 # 69 degrees between TF samples
    R0, t0 = _rot([1, 2, 3], 0.7), np.array([1.0, -2.0, 0.5])
    t_step = np.array([0.4, 0.2, -0.1])
    tf_ns = [T0 + k * 4 * NS // 10 for k in range(3)]               # at frames 0, 4, 8
    samples = [(s, "map", "base", _pose(_rot(axis, k * theta) @ R0, t0 + k * t_step)) for k, s in enumerate(tf_ns)]
    T_base_cam = _pose(_rot([0, 1, 0], -np.pi / 2) @ _rot([1, 0, 0], np.pi / 2), [0.1, 0.0, 0.3])
    bag = write_bag(tmp_path / "bag", rgbd_frames=frames, K=default_intrinsics(W, H), storage="sqlite3",
                    compress=True, rgbd_stamps_ns=rgbd_ns, tf_samples=samples,
                    static_tf=[("base", "camera_optical", T_base_cam)])
    ds = BagDataset(bag)
    assert len(ds) == 9 and ds.map_frame == "map"
    for i, f in enumerate(ds):
        u = i / 4.0                                                 # TF sample index, fractional
        expected = _pose(_rot(axis, u * theta) @ R0, t0 + u * t_step) @ T_base_cam
        np.testing.assert_allclose(f.T_W_S, expected, atol=INTERP_POSE_TOL)
    # an explicit intermediate map frame: base is then the world
    ds_base = BagDataset(bag, map_frame="base")
    np.testing.assert_allclose(ds_base[3].T_W_S, T_base_cam, atol=POSE_TOL)


def test_map_frame_below_the_root_needs_no_link_above_it(tmp_path):
    """map -> odom sent once, odom -> camera at every frame: with map_frame 'odom' every frame has
    its pose (the path ends at the common ancestor, as in tf2); from the root only the frame near
    the one map -> odom sample has."""
    rng = np.random.default_rng(9)
    frames = _rgbd_frames(10, rng)
    rgbd_ns = [T0 + i * NS // 10 for i in range(10)]
    samples = [(T0, "map", "odom", _random_pose(rng))]
    samples += [(t, "odom", "camera_optical", T) for t, (_, _, T) in zip(rgbd_ns, frames)]
    bag = write_bag(tmp_path / "bag", rgbd_frames=frames, K=default_intrinsics(W, H), storage="mcap",
                    rgbd_stamps_ns=rgbd_ns, tf_samples=samples)
    assert len(BagDataset(bag, tf_tolerance_s=0.05)) == 1
    ds = BagDataset(bag, map_frame="odom", tf_tolerance_s=0.05)
    assert len(ds) == 10 and ds.summary()["skipped"]["missing_tf"] == 0
    for f, (_, _, T) in zip(ds, frames):
        np.testing.assert_allclose(f.T_W_S, T, atol=POSE_TOL)


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
def test_damaged_bags_give_value_errors_only(tmp_path, storage):
    """16 bytes overwritten at 64 places of a small bag: it opens and reads, or says it cannot
    (ValueError); the storage libraries' own errors (apsw.CorruptError, OverflowError...) once
    escaped as tracebacks from `voxmap replay`."""
    rng = np.random.default_rng(10)
    good = write_bag(tmp_path / "good", rgbd_frames=_rgbd_frames(3, rng), K=default_intrinsics(W, H),
                     lidar_scans=_scans(2, rng), storage=storage, compress=False)
    data_file = next(f for f in Path(good).iterdir() if f.suffix in (".db3", ".mcap"))
    blob = data_file.read_bytes()
    refused = 0
    for off in np.linspace(0, len(blob) - 16, 64).astype(int):
        bad = tmp_path / f"bad_{off}"
        bad.mkdir()
        for f in Path(good).iterdir():
            (bad / f.name).write_bytes(f.read_bytes())
        b = bytearray(blob)
        b[off:off + 16] = b"\xff" * 16
        (bad / data_file.name).write_bytes(bytes(b))
        try:
            with BagDataset(bad) as ds:
                for i in range(len(ds)):
                    ds[i]
        except ValueError:
            refused += 1
    assert refused > 0


def test_slerp_matches_axis_angle():
    R0 = _rot([1, -1, 0.5], 2.0)
    axis, theta = np.array([0.0, 0.6, 0.8]), 2.5
    q0, q1 = matrix_to_quaternion(R0), matrix_to_quaternion(_rot(axis, theta) @ R0)
    for u in (0.0, 0.25, 0.5, 0.9, 1.0):
        q = slerp(q0, -q1 if u == 0.5 else q1, u)                   # sign of q1 must not matter
        assert abs(abs(q @ matrix_to_quaternion(_rot(axis, u * theta) @ R0)) - 1) < INTERP_POSE_TOL


def test_frames_outside_tf_range_are_skipped(tmp_path):
    rng = np.random.default_rng(4)
    frames, scans = _rgbd_frames(10, rng), _scans(2, rng)
    rgbd_ns = [T0 + i * NS // 10 for i in range(10)]               # 0.0 .. 0.9 s
    lidar_ns = [T0 + 5 * NS // 10, T0 + 2 * NS]                    # 0.5 s inside, 2.0 s outside
    tf_ns = [T0 + k * NS // 10 for k in (2, 4, 6)]                  # TF covers 0.2 .. 0.6 s only
    samples = [(s, "map", c, _random_pose(rng)) for s in tf_ns for c in ("camera_optical", "lidar")]
    bag = write_bag(tmp_path / "bag", rgbd_frames=frames, K=default_intrinsics(W, H), lidar_scans=scans,
                    storage="mcap", rgbd_stamps_ns=rgbd_ns, lidar_stamps_ns=lidar_ns, tf_samples=samples)
    ds = BagDataset(bag, tf_tolerance_s=0.05)
    s = ds.summary()
    assert len(ds) == 6                                            # 5 images (0.2 .. 0.6 s) + 1 scan
    assert s["skipped"]["missing_tf"] == 6
    assert s["missing_tf_by_frame"] == {"camera_optical": 5, "lidar": 1}
    assert ds.stamps_ns.min() == tf_ns[0] and ds.stamps_ns.max() == tf_ns[-1]
    ds_tol = BagDataset(bag, tf_tolerance_s=0.15)                   # 0.1 and 0.7 s now clamp to the ends
    assert len(ds_tol) == 8 and ds_tol.summary()["skipped"]["missing_tf"] == 4
    with pytest.raises(ValueError, match="no frame has a pose"):
        BagDataset(bag, map_frame="camera_optical", sensor_frames={"depth": "nowhere", "cloud": "nowhere"})


def test_generate_bag_and_open_source(tmp_path):
    from voxmap_ros.config import VoxmapConfig
    from voxmap_ros.pipeline import open_source

    info = generate_bag("indoor", 0, tmp_path / "bag", n_frames=3, n_scans=2, storage="mcap", compress=False,
                        width=64, height=48, lidar_hfov_samples=128)
    assert Path(info["gt_mesh"]).is_file() and Path(info["gt_mesh"]).parent == tmp_path
    ds = open_source(tmp_path / "bag", VoxmapConfig())
    assert isinstance(ds, BagDataset) and len(ds) == 5
    assert ds.kinds.count("rgbd") == 3 and ds.kinds.count("lidar") == 2
    f = ds[0]
    assert f.depth.shape == (48, 64) and (f.depth > 0).mean() > 0.5


# ---------------------------------------------------------------------------------------------
# PointCloud2 decoding

def _field(name, offset, datatype):
    return {"name": name, "offset": offset, "datatype": datatype, "count": 1}


def test_pointcloud2_float64_big_endian_padded():
    rng = np.random.default_rng(5)
    xyz = rng.normal(size=(7, 3))
    point_step = 40                                                 # intensity + padding around doubles
    rec = np.zeros(7, np.dtype({"names": ["i", "x", "y", "z"], "formats": [">f4", ">f8", ">f8", ">f8"],
                                "offsets": [0, 8, 16, 24], "itemsize": point_step}))
    rec["x"], rec["y"], rec["z"] = xyz.T
    fields = [_field("intensity", 0, 7), _field("x", 8, 8), _field("y", 16, 8), _field("z", 24, 8)]
    out = pointcloud2_to_xyz(fields, point_step, 7 * point_step, 7, 1, True, rec.tobytes())
    assert out.dtype == np.float32 and out.shape == (7, 3)
    assert np.array_equal(out, xyz.astype(np.float32))
    # the same values little-endian, as a memoryview, with x y z out of order in the record
    rec_le = rec.astype(rec.dtype.newbyteorder("<"))
    fields_rev = [_field("z", 24, 8), _field("x", 8, 8), _field("y", 16, 8)]
    out_le = pointcloud2_to_xyz(fields_rev, point_step, 7 * point_step, 7, 1, False, memoryview(rec_le.tobytes()))
    assert np.array_equal(out_le, out)


def test_pointcloud2_organized_with_nans_and_row_padding():
    h, w, step, row_step = 3, 4, 16, 4 * 16 + 8                     # 8 padding bytes per row
    xyz = np.arange(h * w * 3, dtype=np.float32).reshape(h, w, 3)
    xyz[0, 1, 2] = np.nan
    xyz[2, 3, 0] = np.inf
    buf = bytearray(row_step * h)
    for r in range(h):
        for c in range(w):
            struct.pack_into("<ffff", buf, r * row_step + c * step, *xyz[r, c], 9.0)
    buf[row_step - 8:row_step] = b"\xff" * 8                       # garbage in the padding
    fields = [_field("x", 0, 7), _field("y", 4, 7), _field("z", 8, 7), _field("intensity", 12, 7)]
    out = pointcloud2_to_xyz(fields, step, row_step, w, h, False, bytes(buf))
    keep = np.isfinite(xyz.reshape(-1, 3)).all(1)
    assert out.shape == (h * w - 2, 3) and np.array_equal(out, xyz.reshape(-1, 3)[keep])
    assert pointcloud2_to_xyz(fields, step, row_step, 0, 0, False, b"").shape == (0, 3)


def test_pointcloud2_errors():
    fields = [_field("x", 0, 7), _field("y", 4, 7), _field("intensity", 8, 7)]
    with pytest.raises(ValueError, match="z"):
        pointcloud2_to_xyz(fields, 12, 12, 1, 1, False, bytes(12))
    fields = [_field("x", 0, 7), _field("y", 4, 7), _field("z", 8, 7)]
    with pytest.raises(ValueError, match="truncated"):
        pointcloud2_to_xyz(fields, 12, 36, 3, 2, False, bytes(36 * 2 - 1))
    with pytest.raises(ValueError, match="point_step"):
        pointcloud2_to_xyz([_field("x", 0, 7), _field("y", 4, 7), _field("z", 8, 8)], 12, 12, 1, 1, False, bytes(12))


# ---------------------------------------------------------------------------------------------
# Image decoding

def _padded(arr: np.ndarray, pad: int) -> tuple[bytes, int]:
    rows = arr.reshape(arr.shape[0], -1).view(np.uint8).reshape(arr.shape[0], -1)
    padded = np.concatenate([rows, np.full((arr.shape[0], pad), 0xAB, np.uint8)], 1)
    return padded.tobytes(), padded.shape[1]


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8", "mono8"])
def test_image_color_encodings_with_step_padding(encoding):
    rng = np.random.default_rng(6)
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    if encoding == "mono8":
        raw, expected = rgb[..., 0], np.repeat(rgb[..., :1], 3, axis=2)
    else:
        expected = rgb
        raw = rgb[..., ::-1] if encoding.startswith("bgr") else rgb
        if encoding.endswith("a8"):
            raw = np.concatenate([raw, np.full((5, 7, 1), 77, np.uint8)], 2)
    data, step = _padded(np.ascontiguousarray(raw), 5)
    out = image_to_numpy(encoding, 5, 7, step, False, data)
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3) and np.array_equal(out, expected)


@pytest.mark.parametrize("encoding,dtype", [("16UC1", "u2"), ("mono16", "u2"), ("32FC1", "f4")])
@pytest.mark.parametrize("big", [False, True])
def test_image_depth_encodings(encoding, dtype, big):
    rng = np.random.default_rng(7)
    native = (rng.uniform(0, 60000, (4, 6))).astype(dtype)
    data, step = _padded(native.astype(native.dtype.newbyteorder(">" if big else "<")), 6)
    out = image_to_numpy(encoding, 4, 6, step, big, np.frombuffer(data, np.uint8))
    assert out.dtype == native.dtype and out.dtype.isnative and np.array_equal(out, native)


def test_image_errors():
    with pytest.raises(ValueError, match="unsupported encoding"):
        image_to_numpy("yuv422", 2, 2, 4, False, bytes(8))
    with pytest.raises(ValueError, match="truncated"):
        image_to_numpy("16UC1", 2, 2, 4, False, bytes(7))
    with pytest.raises(ValueError, match="step"):
        image_to_numpy("rgb8", 2, 2, 5, False, bytes(12))


# ---------------------------------------------------------------------------------------------
# Real bags (skipped when ../shared/data is absent)

def _need(sub: str) -> Path:
    p = DATA / sub
    if not p.exists():
        pytest.skip(f"shared data not found at {p}")
    return p


def test_real_rgbd_bag_matches_folder():
    from voxmap_ros.datasets.folder import RgbdFolder

    ds = BagDataset(_need("bags/7scenes-redkitchen-40f"))
    folder = RgbdFolder(_need("7scenes-redkitchen"))
    s = ds.summary()
    assert len(ds) == 40 and s["frames"]["rgbd"] == 40 and s["skipped"]["missing_tf"] == 0
    assert s["compression"] == {"mode": "message", "format": "zstd"} and s["storage"] == "sqlite3"
    f0 = ds[0]
    # the bag's frames are a subset of the folder's: find the first one by its depth image
    j = next(k for k in range(len(folder)) if np.array_equal(folder[k].depth, f0.depth))
    np.testing.assert_allclose(f0.T_W_S, folder.poses[j], atol=REAL_POSE_TOL)
    assert np.array_equal(f0.rgb, folder[j].rgb) and np.allclose(f0.K, folder.K)
    assert f0.depth.dtype == np.uint16 and f0.rgb.shape == (480, 640, 3)
    assert np.all(np.diff(ds.stamps_ns) > 0)


def test_real_lidar_bag_matches_folder():
    from voxmap_ros.datasets.folder import LidarFolder

    ds = BagDataset(_need("bags/livox-hku-mainbuilding-200"))
    folder = LidarFolder(_need("livox-hku-mainbuilding"))
    s = ds.summary()
    assert len(ds) == 200 and s["frames"]["lidar"] == 200 and s["storage"] == "mcap"
    np.testing.assert_allclose(ds[0].T_W_S, folder.poses[0], atol=REAL_LIDAR_POSE_TOL)
    for i in (0, 99, 199):
        f = ds[i]
        assert 1_000 < len(f.points) <= 10_000                       # ~5,000 Livox points a scan
        r = np.linalg.norm(f.points, axis=1)
        assert r.min() > 0.1 and r.max() < 500.0 and 2.0 < np.median(r) < 40.0   # Livox Avia: up to 450 m
        assert np.array_equal(f.points, folder[i].points)


@pytest.mark.parametrize("pose_type", ["nav_msgs/msg/Odometry", "geometry_msgs/msg/PoseStamped"])
def test_pose_topics_without_tf(tmp_path, pose_type):
    """No /tf: an Odometry topic (odom -> lidar) or a PoseStamped topic (pose of the sensor frame)
    gives the poses; the goal-looking PoseStamped topic is ignored."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    from voxmap_ros.sim.bag_writer import MessageBuilder

    rng = np.random.default_rng(8)
    ts = get_typestore(Stores.ROS2_HUMBLE)
    mk = MessageBuilder(ts)
    ty = ts.types
    scans = _scans(3, rng)
    stamps = [T0 + i * NS // 10 for i in range(3)]

    def pose_msg(T):
        q = matrix_to_quaternion(T[:3, :3])
        return ty["geometry_msgs/msg/Pose"](position=ty["geometry_msgs/msg/Point"](x=T[0, 3], y=T[1, 3], z=T[2, 3]),
                                            orientation=ty["geometry_msgs/msg/Quaternion"](x=q[0], y=q[1], z=q[2], w=q[3]))

    with Writer(tmp_path / "bag", version=9, storage_plugin=StoragePlugin.MCAP) as w:
        c_cloud = w.add_connection("/points", "sensor_msgs/msg/PointCloud2", typestore=ts)
        c_pose = w.add_connection("/odom" if "Odometry" in pose_type else "/pose", pose_type, typestore=ts)
        c_goal = w.add_connection("/goal_pose", "geometry_msgs/msg/PoseStamped", typestore=ts)
        w.write(c_goal, stamps[0], ts.serialize_cdr(ty["geometry_msgs/msg/PoseStamped"](
            header=mk.header(stamps[0], "odom"), pose=pose_msg(np.eye(4))), "geometry_msgs/msg/PoseStamped"))
        for (pts, T), s in zip(scans, stamps):
            w.write(c_cloud, s, ts.serialize_cdr(mk.cloud(s, "lidar", pts), "sensor_msgs/msg/PointCloud2"))
            if "Odometry" in pose_type:
                cov = ty["geometry_msgs/msg/PoseWithCovariance"](pose=pose_msg(T), covariance=np.zeros(36))
                tw = ty["geometry_msgs/msg/TwistWithCovariance"](
                    twist=ty["geometry_msgs/msg/Twist"](linear=mk.Vector3(x=0, y=0, z=0),
                                                        angular=mk.Vector3(x=0, y=0, z=0)), covariance=np.zeros(36))
                msg = ty[pose_type](header=mk.header(s, "odom"), child_frame_id="lidar", pose=cov, twist=tw)
            else:
                msg = ty[pose_type](header=mk.header(s, "odom"), pose=pose_msg(T))
            w.write(c_pose, s, ts.serialize_cdr(msg, pose_type))
    ds = BagDataset(tmp_path / "bag")
    assert len(ds) == 3 and ds.map_frame == "odom"
    for f, (pts, T) in zip(ds, scans):
        np.testing.assert_allclose(f.T_W_S, T, atol=POSE_TOL)
        assert np.array_equal(f.points, pts)


def _write_raw_bag(path, items):
    """items: (bag_ns, topic, msgtype, message) with messages from bag_writer.MessageBuilder."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    from voxmap_ros.sim.bag_writer import _typestore
    ts = _typestore()
    with Writer(path, version=Writer.VERSION_LATEST, storage_plugin=StoragePlugin.MCAP) as w:
        conns = {}
        for bag_ns, topic, mt, msg in sorted(items, key=lambda x: x[0]):
            if topic not in conns:
                conns[topic] = w.add_connection(topic, mt, typestore=ts)
            w.write(conns[topic], bag_ns, bytes(ts.serialize_cdr(msg, mt)))
    return path


@pytest.mark.parametrize("aligned", [True, False])
def test_colour_topic_is_the_colour_camera_and_unregistered_colour_is_reported(tmp_path, aligned):
    """A RealSense layout: colour (rgb8), infra1 (mono8) and depth under one prefix. The colour
    camera is picked (once infra1 won on the name); colour from another frame than the depth is
    reported (color_frame_differs)."""
    from voxmap_ros.sim.bag_writer import MessageBuilder, _typestore
    mk = MessageBuilder(_typestore())
    img, info, tfm = "sensor_msgs/msg/Image", "sensor_msgs/msg/CameraInfo", "tf2_msgs/msg/TFMessage"
    K = default_intrinsics(W, H)
    depth_frame = "camera_color_optical_frame" if aligned else "camera_depth_optical_frame"
    depth_topic = "/camera/camera/aligned_depth_to_color/image_raw" if aligned else "/camera/camera/depth/image_rect_raw"
    items = [(T0, "/tf_static", tfm, mk.TFMessage(transforms=[
        mk.transform(T0, "camera_link", "camera_color_optical_frame", np.eye(4)),
        mk.transform(T0, "camera_link", "camera_depth_optical_frame", _pose(np.eye(3), [0.025, 0, 0]))]))]
    for i in range(4):
        t = T0 + i * NS // 10
        items += [(t, "/tf", tfm, mk.TFMessage(transforms=[mk.transform(t, "map", "camera_link",
                                                                          _pose(np.eye(3), [0.1 * i, 0, 0]))])),
                  (t, depth_topic, img, mk.image(t, depth_frame, np.full((H, W), 2000, np.uint16), "16UC1")),
                  (t, "/camera/camera/color/camera_info", info, mk.camera_info(t, depth_frame, K, W, H)),
                  (t, "/camera/camera/color/image_raw", img,
                   mk.image(t, "camera_color_optical_frame", np.full((H, W, 3), 200, np.uint8), "rgb8")),
                  (t, "/camera/camera/infra1/image_rect_raw", img,
                   mk.image(t, "camera_infra1_optical_frame", np.full((H, W), 7, np.uint8), "mono8"))]
    ds = BagDataset(_write_raw_bag(tmp_path / "bag", items))
    s = ds.summary()
    assert s["topics"]["color"] == "/camera/camera/color/image_raw" and len(ds) == 4
    assert int(ds[0].rgb[0, 0, 0]) == 200
    assert s["color_frame_differs"] == ([] if aligned else ["camera_color_optical_frame"])


def test_robot_pose_topic_drives_a_static_sensor_chain_and_static_only_poses_are_reported(tmp_path):
    """PoseStamped of base_link + /tf_static base_link -> cam: the pose topic moves the camera (it
    was ignored: map frame base_link, one pose for every frame). Without the pose topic every
    frame's pose is the same: reported (static_pose_frames)."""
    from voxmap_ros.sim.bag_writer import MessageBuilder, _typestore
    ts = _typestore()
    mk = MessageBuilder(ts)
    t_ = ts.types
    K = default_intrinsics(W, H)
    T_base_cam = _pose(np.eye(3), [0.0, 0.0, 0.5])
    static = (T0, "/tf_static", "tf2_msgs/msg/TFMessage",
              mk.TFMessage(transforms=[mk.transform(T0, "base_link", "cam", T_base_cam)]))
    sensors, poses = [static], []
    for i in range(5):
        t = T0 + i * NS // 10
        sensors += [(t, "/cam/depth", "sensor_msgs/msg/Image", mk.image(t, "cam", np.full((H, W), 2000, np.uint16), "16UC1")),
                    (t, "/cam/info", "sensor_msgs/msg/CameraInfo", mk.camera_info(t, "cam", K, W, H))]
        pose = t_["geometry_msgs/msg/Pose"](position=t_["geometry_msgs/msg/Point"](x=float(i), y=0.0, z=0.0),
                                            orientation=t_["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0))
        poses.append((t, "/robot_pose", "geometry_msgs/msg/PoseStamped",
                      t_["geometry_msgs/msg/PoseStamped"](header=mk.header(t, "map"), pose=pose)))
    ds = BagDataset(_write_raw_bag(tmp_path / "with_pose", sensors + poses))
    s = ds.summary()
    assert s["map_frame"] == "map" and "/robot_pose" in s["topics"]["pose_topics"] and len(ds) == 5
    assert ds.poses[:, 0, 3].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0] and s["static_pose_frames"] == []
    np.testing.assert_allclose(ds.poses[:, 2, 3], 0.5)
    still = BagDataset(_write_raw_bag(tmp_path / "static_only", sensors))
    assert still.map_frame == "base_link" and still.summary()["static_pose_frames"] == ["cam"]


def test_unfinished_recording_and_broken_metadata_get_one_line_errors(tmp_path):
    from voxmap_ros.datasets.folder import open_dataset
    rng = np.random.default_rng(11)
    bag = write_bag(tmp_path / "bag", rgbd_frames=_rgbd_frames(2, rng), K=default_intrinsics(W, H), storage="sqlite3")
    meta = Path(bag) / "metadata.yaml"
    text = meta.read_text()
    meta.write_text(text[: len(text) // 2] + "\n  - [unclosed")
    with pytest.raises(ValueError, match="cannot open as rosbag2") as e:
        BagDataset(bag)
    assert "\n" not in str(e.value)
    meta.unlink()                                   # a recording that never wrote its metadata
    with pytest.raises(ValueError, match="no metadata.yaml.*pass the file itself"):
        open_dataset(bag)
    db3 = next(Path(bag).glob("*.db3"))
    assert len(BagDataset(db3)) == 2


def _simple_rgbd_items(mk, n=4, color_size=None, K=None, info_size=None):
    img, info, tfm = "sensor_msgs/msg/Image", "sensor_msgs/msg/CameraInfo", "tf2_msgs/msg/TFMessage"
    K = default_intrinsics(W, H) if K is None else K
    iw, ih = info_size or (W, H)
    items = []
    for i in range(n):
        t = T0 + i * NS // 10
        items += [(t, "/tf", tfm, mk.TFMessage(transforms=[mk.transform(t, "map", "cam", _pose(np.eye(3), [0.1 * i, 0, 0]))])),
                  (t, "/cam/depth", img, mk.image(t, "cam", np.full((H, W), 2000, np.uint16), "16UC1")),
                  (t, "/cam/info", info, mk.camera_info(t, "cam", K, iw, ih))]
        if color_size is not None:
            cw, ch = color_size
            items.append((t, "/cam/color", img, mk.image(t, "cam", np.full((ch, cw, 3), 200, np.uint8), "rgb8")))
    return items


def test_colour_of_another_size_than_the_depth_is_warned_about(tmp_path, caplog):
    """An unaligned RealSense bag (colour 1280x720, depth 848x480): every frame is fused without
    colour, and that must not pass silently."""
    from voxmap_ros.sim.bag_writer import MessageBuilder, _typestore
    mk = MessageBuilder(_typestore())
    with caplog.at_level("WARNING"):
        ds = BagDataset(_write_raw_bag(tmp_path / "bag", _simple_rgbd_items(mk, color_size=(2 * W, 2 * H))))
    assert len(ds) == 4 and ds[0].rgb is None and ds.summary()["color_size_mismatch"] == 4
    assert any("4 depth frames fused without colour" in r.message and "another size" in r.message
               for r in caplog.records)


@pytest.mark.parametrize("case", ["zero_K", "info_size"])
def test_a_bag_whose_camera_info_is_unusable_says_so_not_missing_tf(tmp_path, case):
    from voxmap_ros.sim.bag_writer import MessageBuilder, _typestore
    mk = MessageBuilder(_typestore())
    kw = {"K": np.zeros((3, 3))} if case == "zero_K" else {"info_size": (W + 1, H)}
    with pytest.raises(ValueError, match="every frame was skipped") as e:
        BagDataset(_write_raw_bag(tmp_path / "bag", _simple_rgbd_items(mk, **kw)))
    assert "camera_info" in str(e.value) and "/tf" not in str(e.value)
