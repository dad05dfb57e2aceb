"""ROS message conversions (pure message objects; no DDS, no rclpy.init)."""
from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("sensor_msgs")
pytest.importorskip("visualization_msgs")

import torch  # noqa: E402
from diagnostic_msgs.msg import DiagnosticStatus  # noqa: E402
from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped  # noqa: E402
from nav_msgs.msg import Odometry  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, PointField  # noqa: E402
from visualization_msgs.msg import Marker, MarkerArray  # noqa: E402

from voxmap_ros.core import morton  # noqa: E402
from voxmap_ros.core.mesh import BrickMesh  # noqa: E402
from voxmap_ros.poses import pose_from_xyz_quat, rpy_to_rotation  # noqa: E402
from voxmap_ros.ros import conversions as conv  # noqa: E402
from voxmap_ros.types import Grid2D  # noqa: E402

ATOL_M = 1e-9            # pose translation agreement (m)
ATOL_ROT = 1e-9          # rotation entries agreement
COLOR_TOL = 1e-6         # marker colour channel agreement (0..1 floats)
S = 1_000_000_000


def rigid(rpy=(0.3, -0.2, 1.7), t=(1.0, -2.0, 0.5)) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = rpy_to_rotation(rpy)
    T[:3, 3] = t
    return T


# ---------------------------------------------------------------------------- time
def test_stamp_roundtrip():
    for ns in (0, 1, 999_999_999, 1_700_000_000 * S + 123_456_789):
        st = conv.ns_to_stamp(ns)
        assert conv.stamp_to_ns(st) == ns
    st = conv.ns_to_stamp(3 * S + 5)
    assert (st.sec, st.nanosec) == (3, 5)
    assert conv.ns_to_stamp(np.int64(7)).nanosec == 7
    with pytest.raises(ValueError):
        conv.ns_to_stamp(-1)
    with pytest.raises(ValueError):
        conv.ns_to_stamp(1.5)
    with pytest.raises(ValueError):
        conv.ns_to_stamp(2**31 * S)


# ---------------------------------------------------------------------------- images
def _expected_decoded(enc: str, a: np.ndarray) -> np.ndarray:
    if enc in ("rgba8", "bgra8") and a.ndim == 3:
        return a[..., :3]
    if enc == "mono8":
        return np.repeat(a[..., None], 3, axis=2)
    return a


def _image_input(enc: str, rng, h=5, w=7) -> np.ndarray:
    if enc in ("rgb8", "bgr8"):
        return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    if enc in ("rgba8", "bgra8"):
        return rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
    if enc == "mono8":
        return rng.integers(0, 256, (h, w), dtype=np.uint8)
    if enc in ("mono16", "16UC1"):
        return rng.integers(0, 65536, (h, w), dtype=np.uint16)
    return rng.normal(size=(h, w)).astype(np.float32)


@pytest.mark.parametrize("enc", ["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16", "16UC1", "32FC1"])
@pytest.mark.parametrize("pad", [0, 5])
def test_image_roundtrip(enc, pad):
    rng = np.random.default_rng(1)
    a = _image_input(enc, rng)
    row = a.shape[1] * a.itemsize * (a.shape[2] if a.ndim == 3 else 1)
    msg = conv.numpy_to_image_msg(a, enc, 5 * S + 1, "cam", step=row + pad if pad else None)
    assert isinstance(msg, Image)
    assert (msg.height, msg.width, msg.step, msg.encoding) == (5, 7, row + pad, enc)
    assert len(msg.data) == msg.step * msg.height
    assert msg.header.frame_id == "cam" and conv.stamp_to_ns(msg.header.stamp) == 5 * S + 1
    out = conv.image_msg_to_numpy(msg)
    np.testing.assert_array_equal(out, _expected_decoded(enc, a))


def test_image_wire_channel_order_and_alpha():
    rgb = np.zeros((1, 2, 3), np.uint8)
    rgb[0, 0] = (10, 20, 30)
    assert bytes(conv.numpy_to_image_msg(rgb, "bgr8", 0, "c").data[:3]) == bytes((30, 20, 10))
    assert bytes(conv.numpy_to_image_msg(rgb, "rgba8", 0, "c").data[:4]) == bytes((10, 20, 30, 255))
    assert bytes(conv.numpy_to_image_msg(rgb, "bgra8", 0, "c").data[:4]) == bytes((30, 20, 10, 255))


def test_image_big_endian_depth():
    d = np.array([[1, 258], [65535, 4096]], dtype=np.uint16)
    msg = Image(height=2, width=2, encoding="16UC1", is_bigendian=True, step=4,
                data=d.astype(">u2").tobytes())
    np.testing.assert_array_equal(conv.image_msg_to_numpy(msg), d)


def test_image_bad_input():
    with pytest.raises(ValueError, match="uint16"):
        conv.numpy_to_image_msg(np.zeros((2, 2), np.float32), "16UC1", 0, "c")
    with pytest.raises(ValueError, match="shape"):
        conv.numpy_to_image_msg(np.zeros((2, 2), np.uint8), "rgb8", 0, "c")
    with pytest.raises(ValueError, match="unsupported"):
        conv.numpy_to_image_msg(np.zeros((2, 2), np.uint8), "yuv422", 0, "c")
    with pytest.raises(ValueError, match="step"):
        conv.numpy_to_image_msg(np.zeros((2, 2), np.uint8), "mono8", 0, "c", step=1)
    msg = conv.numpy_to_image_msg(np.zeros((4, 4), np.uint16), "16UC1", 0, "c")
    msg.data = msg.data[:-2]
    with pytest.raises(ValueError, match="truncated"):
        conv.image_msg_to_numpy(msg)


# ---------------------------------------------------------------------------- camera info
def test_camera_info_roundtrip():
    K = np.array([[525.0, 0, 319.5], [0, 520.0, 239.5], [0, 0, 1]])
    msg = conv.K_to_camera_info(K, 640, 480, 2 * S, "cam")
    assert isinstance(msg, CameraInfo) and (msg.width, msg.height) == (640, 480)
    assert msg.distortion_model == "plumb_bob" and list(msg.d) == [0.0] * 5
    np.testing.assert_array_equal(np.asarray(msg.p).reshape(3, 4)[:, :3], K)
    out = conv.camera_info_to_K(msg)
    assert out.dtype == np.float64 and out.shape == (3, 3)
    np.testing.assert_array_equal(out, K)


def test_camera_info_rejects_bad_k():
    with pytest.raises(ValueError, match="calibrated"):
        conv.camera_info_to_K(CameraInfo())                          # all-zero k
    msg = conv.K_to_camera_info(np.eye(3), 4, 4, 0, "c")
    msg.k[4] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        conv.camera_info_to_K(msg)
    with pytest.raises(ValueError):
        conv.K_to_camera_info(np.eye(2), 4, 4, 0, "c")


# ---------------------------------------------------------------------------- point clouds
def _decode_field(msg, name: str) -> np.ndarray:
    f = {f.name: f for f in msg.fields}[name]
    assert f.datatype == PointField.FLOAT32 and f.count == 1
    rec = np.dtype({"names": [name], "formats": ["<f4"], "offsets": [f.offset], "itemsize": msg.point_step})
    return np.frombuffer(bytes(msg.data), dtype=rec)[name]


def test_pointcloud_xyz_rgb_roundtrip():
    rng = np.random.default_rng(2)
    pts = rng.normal(size=(500, 3)).astype(np.float32)
    cols = rng.integers(0, 256, (500, 3), dtype=np.uint8)
    msg = conv.xyz_rgb_to_pointcloud2(pts, cols, 3 * S, "map")
    assert [f.name for f in msg.fields] == ["x", "y", "z", "rgb"]
    assert [f.offset for f in msg.fields] == [0, 4, 8, 12]
    assert (msg.height, msg.width, msg.point_step, msg.row_step) == (1, 500, 16, 16 * 500)
    assert msg.is_dense and not msg.is_bigendian and msg.header.frame_id == "map"
    np.testing.assert_array_equal(conv.pointcloud2_msg_to_xyz(msg), pts)
    rgb = _decode_field(msg, "rgb")
    np.testing.assert_array_equal(conv.unpack_rgb_float(rgb), cols)
    # The packing RViz expects: 0x00RRGGBB in the float's bits.
    red = conv.pack_rgb_float(np.array([[255, 0, 0], [0, 0, 1]], np.uint8)).view(np.uint32)
    assert red.tolist() == [0x00FF0000, 0x00000001]


def test_pointcloud_xyz_only_and_empty():
    pts = np.arange(12, dtype=np.float64).reshape(4, 3)
    msg = conv.xyz_rgb_to_pointcloud2(pts, None, 0, "lidar")
    assert [f.name for f in msg.fields] == ["x", "y", "z"] and msg.point_step == 12
    np.testing.assert_array_equal(conv.pointcloud2_msg_to_xyz(msg), pts.astype(np.float32))
    empty = conv.xyz_rgb_to_pointcloud2(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8), 0, "m")
    assert empty.width == 0 and len(empty.data) == 0
    assert conv.pointcloud2_msg_to_xyz(empty).shape == (0, 3)
    nan = conv.xyz_rgb_to_pointcloud2(np.array([[np.nan, 0, 0], [1, 2, 3]], np.float32), None, 0, "m")
    assert not nan.is_dense
    np.testing.assert_array_equal(conv.pointcloud2_msg_to_xyz(nan), [[1, 2, 3]])
    with pytest.raises(ValueError, match="colors"):
        conv.xyz_rgb_to_pointcloud2(pts, np.zeros((3, 3), np.uint8), 0, "m")
    with pytest.raises(ValueError, match="points"):
        conv.xyz_rgb_to_pointcloud2(np.zeros((4, 2)), None, 0, "m")


# ---------------------------------------------------------------------------- occupancy grid
def test_occupancy_grid_cell_lands_right():
    H, W, res, origin = 4, 6, 0.5, (-1.0, 2.0)
    data = np.full((H, W), -1, np.int8)
    data[0, :] = 0
    data[1, 4] = 100                                     # centre at x = -1 + 4.5*0.5, y = 2 + 1.5*0.5
    msg = conv.grid_to_occupancy_grid(Grid2D(data, res, origin), 4 * S, "map", z_m=0.25)
    info = msg.info
    assert (info.width, info.height) == (W, H) and math.isclose(info.resolution, res)
    assert (info.origin.position.x, info.origin.position.y, info.origin.position.z) == (-1.0, 2.0, 0.25)
    assert info.origin.orientation.w == 1.0
    assert msg.header.frame_id == "map" and conv.stamp_to_ns(msg.header.stamp) == 4 * S
    assert len(msg.data) == H * W
    flat = np.asarray(msg.data, np.int8)
    assert np.flatnonzero(flat == 100).tolist() == [1 * W + 4]
    assert (flat[:W] == 0).all() and (flat[2 * W:] == -1).all()
    # Where a consumer (Nav2 / RViz) puts that cell: index -> (col, row) -> world centre.
    idx = int(np.flatnonzero(flat == 100)[0])
    col, row = idx % info.width, idx // info.width
    x = info.origin.position.x + (col + 0.5) * info.resolution
    y = info.origin.position.y + (row + 0.5) * info.resolution
    assert (x, y) == (-1.0 + 4.5 * 0.5, 2.0 + 1.5 * 0.5)


def test_occupancy_grid_rejects_bad_values():
    with pytest.raises(ValueError, match=r"\[-1, 100\]"):
        conv.grid_to_occupancy_grid(Grid2D(np.array([[101]], np.int16), 0.1, (0, 0)), 0, "map")
    with pytest.raises(ValueError, match="integer"):
        conv.grid_to_occupancy_grid(Grid2D(np.zeros((2, 2), np.float32), 0.1, (0, 0)), 0, "map")
    with pytest.raises(ValueError, match="resolution"):
        conv.grid_to_occupancy_grid(Grid2D(np.zeros((2, 2), np.int8), 0.0, (0, 0)), 0, "map")


# ---------------------------------------------------------------------------- poses
def test_pose_messages_all_types():
    T = rigid()
    pose = conv.matrix_to_pose_msg(T)
    ps = PoseStamped()
    ps.header.stamp, ps.header.frame_id, ps.pose = conv.ns_to_stamp(10 * S + 7), "map", pose
    pc = PoseWithCovarianceStamped()
    pc.header, pc.pose.pose = ps.header, pose
    od = Odometry()
    od.header, od.child_frame_id, od.pose.pose = ps.header, "base_link", pose
    ts = conv.matrix_to_transform_stamped(T, 10 * S + 7, "map", "base_link")
    for msg, child in ((ps, None), (pc, None), (od, "base_link"), (ts, "base_link")):
        stamp, frame, c, T2 = conv.pose_msg_to_matrix(msg)
        assert (stamp, frame, c) == (10 * S + 7, "map", child), type(msg).__name__
        np.testing.assert_allclose(T2, T, atol=ATOL_ROT)


def test_pose_message_bad_input():
    zero_q = PoseStamped()
    zero_q.pose.orientation.w = 0.0                       # an all-zero quaternion
    with pytest.raises(ValueError, match="quaternion"):
        conv.pose_msg_to_matrix(zero_q)
    nan_p = PoseStamped()
    nan_p.pose.position.x = float("nan")
    with pytest.raises(ValueError, match="finite"):
        conv.pose_msg_to_matrix(nan_p)
    with pytest.raises(ValueError, match="unsupported"):
        conv.pose_msg_to_matrix(Image())
    bad = np.eye(4)
    bad[0, 0] = 2
    with pytest.raises(ValueError):
        conv.matrix_to_pose_msg(bad)
    np.testing.assert_allclose(conv.pose_msg_to_matrix(
        conv.matrix_to_transform_stamped(np.eye(4), 0, "a", "b"))[3], np.eye(4), atol=ATOL_M)
    # A non-unit quaternion from the wire is normalized.
    ps = PoseStamped()
    ps.pose.orientation.w = 2.0
    np.testing.assert_allclose(conv.pose_msg_to_matrix(ps)[3], pose_from_xyz_quat((0, 0, 0), (0, 0, 0, 1)))


# ---------------------------------------------------------------------------- mesh chunker
def brick_tris(coord, n, seed=0, shift=0.0):
    """n triangles inside brick `coord` (8 voxels of 0.1 m), weld keys shared between neighbours."""
    rng = np.random.default_rng(seed)
    base = np.asarray(coord, np.float32) * 0.8
    verts = base + rng.uniform(0, 0.8, (n, 3, 3)).astype(np.float32) + np.float32(shift)
    cols = rng.integers(0, 256, (n, 3, 3), dtype=np.uint8)
    key0 = (hash(tuple(coord)) % 1000) * 10**6 + seed * 10**4
    ekeys = key0 + np.arange(3 * n, dtype=np.int64).reshape(n, 3)
    ekeys[1:, 0] = ekeys[:-1, 1]                       # shared corners, as a welded mesh has
    verts[1:, 0] = verts[:-1, 1]
    cols[1:, 0] = cols[:-1, 1]
    bkey = morton.encode(torch.tensor([coord]), 0).item()
    return BrickMesh(torch.from_numpy(verts), torch.from_numpy(cols), torch.from_numpy(ekeys),
                     torch.full((n,), bkey, dtype=torch.int64))


def bkey(coord) -> int:
    return morton.encode(torch.tensor([coord]), 0).item()


def keys(*coords) -> torch.Tensor:
    return torch.tensor([bkey(c) for c in coords], dtype=torch.int64)


NONE = torch.zeros(0, dtype=torch.int64)
A, B, C, D = (0, 0, 0), (1, 0, 0), (2, 0, 0), (5, 5, 5)     # A, B share a level-1 chunk


def marker_soup(m: Marker) -> tuple[np.ndarray, np.ndarray]:
    return (np.array([[p.x, p.y, p.z] for p in m.points]),
            np.array([[c.r, c.g, c.b, c.a] for c in m.colors]))


def check_marker_matches(m: Marker, mesh: BrickMesh):
    assert m.type == Marker.TRIANGLE_LIST and m.action == Marker.ADD and m.ns == "voxmap_mesh"
    assert len(m.points) == 3 * mesh.tri_vertices.shape[0] == len(m.colors)
    assert (m.scale.x, m.scale.y, m.scale.z) == (1.0, 1.0, 1.0) and m.pose.orientation.w == 1.0
    assert m.color.a == 1.0 and m.header.frame_id == "map"
    pts, cols = marker_soup(m)
    got = sorted(map(tuple, np.concatenate([pts, cols[:, :3] * 255], axis=1).round(3).tolist()))
    want = np.concatenate([mesh.tri_vertices.reshape(-1, 3).double().numpy(),
                           mesh.tri_colors.reshape(-1, 3).double().numpy()], axis=1)
    assert got == sorted(map(tuple, want.round(3).tolist()))
    assert np.all(cols[:, 3] == 1.0)


def test_chunker_update_only_changed_chunks():
    ch = conv.MeshChunker(chunk_level=1)
    parts = {A: brick_tris(A, 5, 1), B: brick_tris(B, 4, 2), C: brick_tris(C, 3, 3), D: brick_tris(D, 2, 4)}
    store = BrickMesh.cat(list(parts.values()))
    out = ch.update(store, keys(A, B, C, D), NONE, "map", 7 * S)
    assert isinstance(out, MarkerArray) and len(out.markers) == 3 and ch.num_chunks == 3
    assert sum(len(m.points) for m in out.markers) == 3 * store.tri_vertices.shape[0]
    assert ch.num_triangles == store.tri_vertices.shape[0]
    ids = {m.id for m in out.markers}
    assert len(ids) == 3
    by_chunk = {int(ch.chunk_keys_of(keys(c))[0]): c for c in (A, C, D)}
    id_of = {by_chunk[k]: ch.chunk_id(k) for k in by_chunk}
    for m in out.markers:
        c = next(c for c, i in id_of.items() if i == m.id)
        check_marker_matches(m, BrickMesh.cat([parts[A], parts[B]]) if c == A else parts[c])
        assert conv.stamp_to_ns(m.header.stamp) == 7 * S

    # Nothing changed: nothing to send.
    assert ch.update(store, NONE, NONE).markers == []

    # Brick C re-meshed: only its chunk, same id.
    parts[C] = brick_tris(C, 6, 9, shift=0.01)
    store = BrickMesh.cat(list(parts.values()))
    out = ch.update(store, keys(C), NONE)
    assert [m.id for m in out.markers] == [id_of[C]]
    check_marker_matches(out.markers[0], parts[C])

    # Brick A removed: its chunk still holds B, so it is updated (not deleted).
    del parts[A]
    store = BrickMesh.cat(list(parts.values()))
    out = ch.update(store, NONE, keys(A))
    assert [(m.id, m.action) for m in out.markers] == [(id_of[A], Marker.ADD)]
    check_marker_matches(out.markers[0], parts[B])

    # Brick D removed: its chunk became empty -> DELETE with the same id.
    del parts[D]
    store = BrickMesh.cat(list(parts.values()))
    out = ch.update(store, NONE, keys(D))
    assert [(m.id, m.action, m.ns) for m in out.markers] == [(id_of[D], Marker.DELETE, "voxmap_mesh")]
    assert ch.num_chunks == 2

    # A changed brick in an unknown chunk that has no triangles: nothing to send.
    assert ch.update(store, keys((40, 40, 40)), NONE).markers == []

    # Late subscriber: every current chunk.
    full = ch.full_markers("map", 9 * S)
    assert sorted(m.id for m in full.markers) == sorted([id_of[A], id_of[C]])
    assert sum(len(m.points) for m in full.markers) == 3 * store.tri_vertices.shape[0]

    # D comes back: it keeps its id.
    parts[D] = brick_tris(D, 2, 5)
    out = ch.update(BrickMesh.cat(list(parts.values())), keys(D), NONE)
    assert [(m.id, m.action) for m in out.markers] == [(id_of[D], Marker.ADD)]

    clear = ch.delete_all("map", 0)
    assert [(m.action, m.ns) for m in clear.markers] == [(Marker.DELETEALL, "voxmap_mesh")]
    assert ch.num_chunks == 0 and ch.full_markers().markers == []


def test_chunker_accepts_numpy_keys_and_level0():
    ch = conv.MeshChunker(chunk_level=0, ns="m")
    store = BrickMesh.cat([brick_tris(A, 2, 1), brick_tris(B, 2, 2)])
    out = ch.update(store, keys(A, B).numpy(), np.zeros(0, np.int64))
    assert len(out.markers) == 2 and {m.ns for m in out.markers} == {"m"}
    with pytest.raises(ValueError):
        conv.MeshChunker(chunk_level=-1)


def test_chunker_cdr_matches_messages():
    ser = pytest.importorskip("rclpy.serialization")
    if not conv.cdr_supported():
        pytest.skip("CDR fast path disabled for this rmw / message definition")
    ch = conv.MeshChunker(chunk_level=1)
    parts = [brick_tris(A, 5, 1), brick_tris(C, 3, 3), brick_tris(D, 2, 4)]
    store = BrickMesh.cat(parts)
    b = ch.update_cdr(store, keys(A, C, D), NONE, "odd_frame", 3 * S + 1)
    ref = ch.full_markers("odd_frame", 3 * S + 1)
    got = ser.deserialize_message(b, MarkerArray)
    assert [m.id for m in got.markers] == [m.id for m in ref.markers]
    for g, r in zip(got.markers, ref.markers):
        assert (g.header, g.ns, g.type, g.action, g.pose, g.scale, g.color) == \
               (r.header, r.ns, r.type, r.action, r.pose, r.scale, r.color)
        assert g.points == r.points                               # float32 vertices: exact in float64
        np.testing.assert_allclose(marker_soup(g)[1], marker_soup(r)[1], atol=COLOR_TOL)
    # DELETE markers and "nothing changed".
    b = ch.update_cdr(BrickMesh.cat(parts[:2]), NONE, keys(D))
    got = ser.deserialize_message(b, MarkerArray)
    assert [(m.action, m.id) for m in got.markers] == [(Marker.DELETE, ch.chunk_id(ch.chunk_keys_of(keys(D))[0]))]
    assert ch.update_cdr(store, NONE, NONE) is None
    assert ser.deserialize_message(ch.full_markers_cdr(), MarkerArray).markers[0].points


def test_chunker_follows_mapper(indoor_data):
    from conftest import make_config

    from voxmap_ros.core.mapper import Mapper
    from voxmap_ros.types import Frame
    mapper = Mapper(make_config(0.05))
    ch = conv.MeshChunker(chunk_level=1)
    seen_ids: dict[int, int] = {}
    for i, (d, c, T) in enumerate(indoor_data.frames[:3]):
        mapper.integrate(Frame(T_W_S=T, depth=d, rgb=c, K=indoor_data.K))
        up = mapper.update_mesh()
        store = mapper.mesh_store()
        out = ch.update(store, up.remeshed_keys, up.removed_keys)
        touched = set(ch.chunk_keys_of(torch.cat([up.remeshed_keys, up.removed_keys])).tolist())
        for m in out.markers:
            key = next(k for k in touched if ch.chunk_id(k) == m.id)      # only touched chunks are sent
            assert seen_ids.setdefault(key, m.id) == m.id                  # ids stable across updates
            assert len(m.points) % 3 == 0 and len(m.points) == len(m.colors)
        assert ch.num_triangles == store.tri_vertices.shape[0]
    full = ch.full_markers()
    assert sum(len(m.points) for m in full.markers) == 3 * mapper.mesh_store().tri_vertices.shape[0] > 0


# ---------------------------------------------------------------------------- diagnostics
def test_diagnostics():
    arr = conv.make_diagnostics("voxmap: map", "voxmap", DiagnosticStatus.WARN, "2 frames dropped",
                                {"dropped_rgbd": 2, "ms_per_frame_median": 12.3456789, "device": "cpu"}, 5 * S)
    assert conv.stamp_to_ns(arr.header.stamp) == 5 * S and len(arr.status) == 1
    st = arr.status[0]
    assert (st.level, st.name, st.hardware_id, st.message) == (DiagnosticStatus.WARN, "voxmap: map", "voxmap",
                                                              "2 frames dropped")
    assert {kv.key: kv.value for kv in st.values} == {"dropped_rgbd": "2", "ms_per_frame_median": "12.3457",
                                                      "device": "cpu"}
    assert conv.make_diagnostics("n", "h", 2, "", {}, 0).status[0].level == DiagnosticStatus.ERROR
    assert conv.make_diagnostics("n", "h", "stale", "", {}, 0).status[0].level == DiagnosticStatus.STALE
    for bad in (4, "fine", True, b"\x07"):
        with pytest.raises(ValueError):
            conv.make_diagnostics("n", "h", bad, "", {}, 0)
