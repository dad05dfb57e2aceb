"""VoxmapNode end to end over real DDS: rclpy publishers / subscribers / service clients talk to the
node through the middleware (no ROS mocks). One node per module, in its own rclpy Context on a
random domain id with localhost-only discovery and a random namespace, spun by a
MultiThreadedExecutor in a background thread; all of it is shut down in the fixture's teardown.

Input: a flat wall x = 2 m seen by a camera at (0, 0, 1) looking along +x (160x120 depth, constant
2 m, K fx = fy = 120, cx = 80, cy = 60, colour rgb8) and by a LiDAR at (0, 0, 1) (identity
rotation). Poses arrive as TransformStamped on the pose topic, one child frame per sensor frame,
at stamps bracketing the sensor stamps.

Tests wait by polling with timeouts (never fixed long sleeps). They run in file order and share
the node; a test that needs the wall in the map feeds it when the map is empty.
"""
from __future__ import annotations

import array
import contextlib
import gc
import hashlib
import os
import random
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

try:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import TransformStamped
    from nav_msgs.msg import OccupancyGrid
    from rcl_interfaces.srv import SetParameters
    from rclpy.context import Context
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.node import Node
    from rclpy.parameter import Parameter
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField
    from std_srvs.srv import Trigger
    from visualization_msgs.msg import Marker, MarkerArray

    from voxmap_ros.ros import conversions as conv
    from voxmap_ros.ros.node import VoxmapNode
except ImportError as e:                                   # no rclpy / messages in this environment
    pytest.skip(f"rclpy or ROS messages not importable: {e}", allow_module_level=True)

import torch  # noqa: E402

from voxmap_ros.config import VoxmapConfig  # noqa: E402
from voxmap_ros.datasets import msg_decode  # noqa: E402

S = 1_000_000_000
W, H = 160, 120
K = np.array([[120.0, 0.0, 80.0], [0.0, 120.0, 60.0], [0.0, 0.0, 1.0]])
R_W_C = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])   # optical frame looking along +x
WALL_X = 2.0
CAM_FRAME, LIDAR_FRAME = "wall_camera", "wall_lidar"
VOXEL = 0.05
QUEUE_SIZE = 4
POSE_WAIT_S = 4.0                 # > a reliable sample's repair after the next heartbeat (~3 s) on a loaded machine
MAX_POINTS = 20_000
WAIT_S = 20.0                     # generous upper bound of every poll (a loaded 2-core machine)


# ============================================================================ helpers
def wait_for(pred, timeout: float = WAIT_S, what: str = "condition", period: float = 0.01):
    """Poll `pred` until it returns a truthy value; fail with `what` (a string or a callable giving
    one at the time of failure) after `timeout` seconds."""
    end = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout} s waiting for {what() if callable(what) else what}")
        time.sleep(period)


def T_cam() -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = R_W_C
    T[:3, 3] = (0.0, 0.0, 1.0)
    return T


def T_lidar() -> np.ndarray:
    T = np.eye(4)
    T[:3, 3] = (0.0, 0.0, 1.0)
    return T


def wall_cloud(y=(-1.0, 1.0), z=(-0.8, 0.8), n=(60, 40)) -> np.ndarray:
    """Points of the wall x = WALL_X in the LiDAR frame (sensor at (0, 0, 1), identity rotation)."""
    yy, zz = np.meshgrid(np.linspace(*y, n[0]), np.linspace(*z, n[1]))
    return np.stack([np.full(yy.size, WALL_X), yy.ravel(), zz.ravel()], 1).astype(np.float32)


def image_msg(data: bytes, encoding: str, width: int, height: int, step: int, stamp: int, frame: str) -> Image:
    buf = array.array("B")
    buf.frombytes(data)
    return Image(header=conv._header(stamp, frame), height=height, width=width, encoding=encoding,
                 is_bigendian=False, step=step, data=buf)


def octree_hash(octree) -> str:
    """Hash of the map content: every voxel attribute and the coordinates of the live bricks."""
    h = hashlib.sha256()
    alive = octree.brick_alive
    h.update(octree.brick_coord[alive].contiguous().numpy().tobytes())
    for name in sorted(octree.attrs):
        h.update(name.encode())
        h.update(octree.attrs[name][alive].contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def map_state(node) -> tuple[int, str]:
    with node._lock:
        return node.mapper.summary()["voxels"], octree_hash(node.mapper.octree)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def apply_markers(state: dict, msg: MarkerArray) -> None:
    """Fold a MarkerArray into {id: marker} the way RViz does (ADD replaces, DELETE removes)."""
    for m in msg.markers:
        if m.action == Marker.DELETE:
            state.pop(m.id, None)
        elif m.action == Marker.DELETEALL:
            state.clear()
        else:
            state[m.id] = m


def marker_arrays(m: Marker) -> tuple[np.ndarray, np.ndarray]:
    p = np.array([[q.x, q.y, q.z] for q in m.points], np.float64).reshape(-1, 3)
    c = np.array([[q.r, q.g, q.b, q.a] for q in m.colors], np.float64).reshape(-1, 4)
    return p, c


# ============================================================================ the test client
class Client:
    """The test's own node: feeds the sensors and poses, records what the mapping node publishes."""

    def __init__(self, ctx, ns: str, node_name: str):
        self.node = Node("voxmap_test_client", context=ctx, namespace=ns)
        self.ns = ns
        self.base = f"{ns}/{node_name}"
        rel = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        n = self.node
        self.pub_depth = n.create_publisher(Image, "camera/depth/image_raw", rel)
        self.pub_color = n.create_publisher(Image, "camera/color/image_raw", rel)
        self.pub_info = n.create_publisher(CameraInfo, "camera/depth/camera_info", rel)
        self.pub_cloud = n.create_publisher(PointCloud2, "lidar/points", rel)
        self.pub_pose = n.create_publisher(TransformStamped, "pose",
                                           QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE))
        self.lock = threading.Lock()
        self.mesh: list[tuple[float, MarkerArray]] = []
        self.grids: list[OccupancyGrid] = []
        self.voxels: list[PointCloud2] = []
        self.diags: list[tuple[float, dict, int]] = []
        latched = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        n.create_subscription(MarkerArray, f"{self.base}/mesh", self._on_mesh, latched)
        n.create_subscription(OccupancyGrid, f"{self.base}/occupancy", self._keep(self.grids), latched)
        n.create_subscription(PointCloud2, f"{self.base}/occupied_voxels", self._keep(self.voxels), latched)
        n.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 50)
        self.save = n.create_client(Trigger, f"{self.base}/save_map")
        self.clear = n.create_client(Trigger, f"{self.base}/clear_map")
        self.set_params = n.create_client(SetParameters, f"{self.base}/set_parameters")
        self.next_stamp = 100 * S

    def _keep(self, store: list):
        def cb(msg):
            with self.lock:
                store.append(msg)
                del store[:-5]                     # the latest few are enough
        return cb

    def _on_mesh(self, msg: MarkerArray) -> None:
        with self.lock:
            self.mesh.append((time.monotonic(), msg))

    def _on_diag(self, msg: DiagnosticArray) -> None:
        for st in msg.status:
            if st.hardware_id == "voxmap" and st.name.startswith("voxmap"):
                with self.lock:
                    self.diags.append((time.monotonic(), {kv.key: kv.value for kv in st.values},
                                       st.level[0] if isinstance(st.level, bytes) else int(st.level)))
                    del self.diags[:-200]

    # ---------------------------------------------------------------- feeding
    def stamp(self, step_ns: int = S // 10) -> int:
        self.next_stamp += step_ns
        return self.next_stamp

    def pose(self, stamp: int, child: str, T: np.ndarray, parent: str = "map") -> None:
        self.pub_pose.publish(conv.matrix_to_transform_stamped(T, stamp, parent, child))

    def poses_around(self, stamp: int, margin_ns: int = 20_000_000) -> None:
        for s in (stamp - margin_ns, stamp + margin_ns):
            self.pose(s, CAM_FRAME, T_cam())
            self.pose(s, LIDAR_FRAME, T_lidar())

    def info(self, stamp: int, width: int = W, height: int = H) -> None:
        self.pub_info.publish(conv.K_to_camera_info(K, width, height, stamp, CAM_FRAME))

    def rgbd(self, stamp: int, encoding: str = "32FC1", frame: str = CAM_FRAME, color: bool = True) -> None:
        if encoding == "32FC1":
            depth = np.full((H, W), WALL_X, np.float32)
        else:
            depth = np.full((H, W), int(WALL_X * 1000), np.uint16)
        if color:
            rgb = np.zeros((H, W, 3), np.uint8)
            rgb[..., 0] = 200
            rgb[..., 2] = np.arange(W, dtype=np.uint8)[None, :]
            self.pub_color.publish(conv.numpy_to_image_msg(rgb, "rgb8", stamp, frame))
        self.pub_depth.publish(conv.numpy_to_image_msg(depth, encoding, stamp, frame))

    def cloud(self, stamp: int, points: np.ndarray, frame: str = LIDAR_FRAME) -> None:
        self.pub_cloud.publish(conv.xyz_rgb_to_pointcloud2(points, None, stamp, frame))

    # ---------------------------------------------------------------- services
    def call(self, client, request, timeout: float = WAIT_S):
        assert client.wait_for_service(timeout_sec=timeout), f"service {client.srv_name} not available"
        fut = client.call_async(request)
        wait_for(fut.done, timeout, f"answer of {client.srv_name}")
        return fut.result()

    def set_param(self, name: str, value):
        v = Parameter(name, value=value).to_parameter_msg()
        res = self.call(self.set_params, SetParameters.Request(parameters=[v]))
        return res.results[0]

    def diag_after(self, t: float, pred=None, timeout: float = WAIT_S) -> dict:
        """Values of the first diagnostics message received after monotonic time `t` (that
        satisfies `pred`: a message in flight at `t` may carry values from before it)."""
        def get():
            with self.lock:
                for ts, values, _level in self.diags:
                    if ts > t and (pred is None or pred(values)):
                        return values
            return None
        return wait_for(get, timeout, "a diagnostics message" + (" matching the expectation" if pred else ""))

    def mesh_count(self) -> int:
        with self.lock:
            return len(self.mesh)

    def latest(self, store: list, after=None):
        with self.lock:
            for msg in reversed(store):
                if after is None or after(msg):
                    return msg
        return None


class Ros:
    """What the tests get: the node, the client and a few waits on the node's state."""

    def __init__(self, node: VoxmapNode, client: Client, out_dir: Path):
        self.node, self.client, self.out_dir = node, client, out_dir

    def count(self, key: str) -> int:
        with self.node._count_lock:
            return self.node.counters.get(key, 0)

    def wait_count(self, key: str, at_least: int, timeout: float = WAIT_S) -> int:
        return wait_for(lambda: self.count(key) >= at_least and self.count(key), timeout,
                        lambda: f"{key} >= {at_least} (now {self.count(key)})")

    def wait_idle(self, timeout: float = WAIT_S) -> None:
        wait_for(lambda: self.node.pending_frames() == 0, timeout, "the worker to drain its queues")

    def wait_mesh_cycles(self, n: int = 2) -> None:
        c = self.count("mesh_cycles")
        self.wait_count("mesh_cycles", c + n)

    def settle_mesh(self) -> None:
        """Worker idle, a full mesh cycle after that, and its message (if any) received."""
        self.wait_idle()
        self.wait_mesh_cycles(2)
        wait_for(lambda: self.client.mesh_count() >= self.count("mesh_messages"), WAIT_S,
                 "the published mesh messages to arrive")

    def feed_wall(self, encoding: str = "32FC1", lidar: bool = True) -> int:
        """One RGB-D frame (+ one LiDAR scan) of the wall with poses; waits until integrated."""
        c = self.client
        n_rgbd, n_lidar = self.count("integrated_rgbd"), self.count("integrated_lidar")
        stamp = c.stamp()
        c.poses_around(stamp)
        c.info(stamp)
        c.rgbd(stamp, encoding)
        if lidar:
            c.cloud(stamp, wall_cloud())
        self.wait_count("integrated_rgbd", n_rgbd + 1)
        if lidar:
            self.wait_count("integrated_lidar", n_lidar + 1)
        return stamp

    def ensure_wall(self) -> None:
        if self.node.mapper.summary()["voxels"] == 0:
            self.feed_wall()
            self.feed_wall()


# ============================================================================ fixture
PROBE_FRAME = "discovery_probe"                 # child frame of the pose that proves delivery


@contextlib.contextmanager
def running_node(cfg, domain_id: int, ns: str, client_cls, node_publishers):
    """A VoxmapNode and a test client (client_cls(ctx, ns, "voxmap")) in their own rclpy context,
    spun by a MultiThreadedExecutor thread, discovery done both ways and the first CameraInfo in.
    node_publishers(node) -> the node's publishers the client subscribes to. Tears all down."""
    ctx = Context()
    rclpy.init(context=ctx, domain_id=domain_id)
    executor = spin = node = client = None
    try:
        node = VoxmapNode("voxmap", config=cfg, context=ctx, namespace=ns)
        client = client_cls(ctx, ns, "voxmap")
        executor = MultiThreadedExecutor(num_threads=4, context=ctx)
        executor.add_node(node)
        executor.add_node(client.node)
        spin = threading.Thread(target=executor.spin, name="voxmap_test_spin", daemon=True)
        spin.start()
        # Discovery: every publisher of the client matched by the node, and back.
        for pub in (client.pub_depth, client.pub_color, client.pub_info, client.pub_cloud, client.pub_pose):
            wait_for(lambda p=pub: p.get_subscription_count() >= 1, WAIT_S, f"a subscriber on {pub.topic_name}")
        for pub in node_publishers(node):
            wait_for(lambda p=pub: p.get_subscription_count() >= 1, WAIT_S, f"a subscriber on {pub.topic_name}")
        wait_for(lambda: client.info(client.next_stamp) or node._K is not None, WAIT_S, "the first CameraInfo",
                 period=0.05)
        # A matched publisher is not yet a delivering one: on a loaded machine the first poses could
        # come in after a frame had waited its pose_wait_s out. A pose of a frame no test uses,
        # re-sent until the node holds it, makes sure the pose path delivers before the tests start.
        wait_for(lambda: client.pose(client.next_stamp, PROBE_FRAME, np.eye(4)) or PROBE_FRAME in node._poses,
                 WAIT_S, "the first pose", period=0.05)
        yield node, client
    finally:
        if executor is not None:
            executor.shutdown()
        if spin is not None:
            spin.join(timeout=10.0)
        if node is not None:
            node.destroy_node()
        if client is not None:
            client.node.destroy_node()
        gc.collect()
        rclpy.shutdown(context=ctx)
        assert spin is None or not spin.is_alive(), "executor thread still running"


@pytest.fixture(scope="module")
def ros(tmp_path_factory):
    old_range = os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE")
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    domain_id = random.SystemRandom().randint(1, 200)
    ns = "/voxmap_test_" + uuid.uuid4().hex[:8]
    out_dir = tmp_path_factory.mktemp("voxmap_node_out")
    threads_before = set(threading.enumerate())
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)                     # the worker shares 2 cores with DDS and the executor

    cfg = VoxmapConfig()
    cfg.map.backend = "torch"
    cfg.map.voxel_size_m = VOXEL
    cfg.map.initial_bricks = 256
    n = cfg.node
    n.pose_source = "topic"
    n.pose_topic_type = "TransformStamped"
    n.sensor_qos = "reliable"
    n.mesh_rate_hz = 10.0
    n.occupancy_rate_hz = 5.0
    n.occupied_voxels_rate_hz = 5.0
    n.diagnostics_rate_hz = 10.0
    n.prune_rate_hz = 0.0                         # pruning would change the map between snapshots
    n.queue_size = QUEUE_SIZE
    n.pose_wait_s = POSE_WAIT_S
    n.max_points = MAX_POINTS
    n.output_dir = str(out_dir)
    cfg.validate()

    with running_node(cfg, domain_id, ns, Client, lambda node: (node.pub_mesh, node.pub_grid, node.pub_voxels,
                                                                 node.pub_diag)) as (node, client):
        yield Ros(node, client, out_dir)
        print("\nnode counters at the end:", dict(node.counters))
    torch.set_num_threads(torch_threads)
    if old_range is None:
        os.environ.pop("ROS_AUTOMATIC_DISCOVERY_RANGE", None)
    else:
        os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = old_range
    assert not node._worker.is_alive(), "worker thread still running"
    wait_for(lambda: not (set(threading.enumerate()) - threads_before), 5.0,
             lambda: f"no threads left over, still running: {set(threading.enumerate()) - threads_before}")


# ============================================================================ configuration
def test_config_becomes_parameters(ros):
    node = ros.node
    assert node.cfg.map.voxel_size_m == VOXEL
    assert node.get_parameter("map.voxel_size_m").value == VOXEL
    assert node.get_parameter("node.mesh_rate_hz").value == 10.0
    assert node.get_parameter("node.pose_topic_type").value == "TransformStamped"
    assert list(node.get_parameter("node.camera_extrinsic").value) == [0.0] * 6
    assert node.describe_parameter("map.voxel_size_m").read_only
    assert not node.describe_parameter("node.mesh_rate_hz").read_only
    assert node._pose_mode == "topic"


def test_parameter_overrides_merge_with_config(ros):
    """Start-up overrides win over `config=` (integers accepted for double parameters); the node
    is not spun, only constructed and destroyed."""
    cfg = VoxmapConfig()
    cfg.map.backend = "torch"
    cfg.map.initial_bricks = 64
    cfg.node.pose_source = "topic"
    cfg.node.mesh_rate_hz = 3.0
    cfg.node.queue_size = 7
    overrides = [Parameter("node.mesh_rate_hz", value=2), Parameter("map.voxel_size_m", value=0.1),
                 Parameter("node.lidar_extrinsic", value=[0, 0, 1, 0, 0, 0])]
    other = VoxmapNode("voxmap_overrides", config=cfg, context=ros.node.context, parameter_overrides=overrides,
                       namespace=ros.client.ns + "_o")
    try:
        assert other.cfg.node.mesh_rate_hz == 2.0 and isinstance(other.cfg.node.mesh_rate_hz, float)
        assert other.cfg.map.voxel_size_m == 0.1
        assert other.cfg.node.queue_size == 7                  # from config=
        assert other.cfg.node.lidar_extrinsic == [0.0, 0.0, 1.0, 0.0, 0.0, 0.0]
        assert other.mapper.octree.voxel_size_m == 0.1
        assert other.job_period_s("mesh") == 0.5
    finally:
        other.destroy_node()
    assert not other._worker.is_alive()


def test_a_misspelt_parameter_is_refused_at_start(ros):
    """ROS ignores overrides for undeclared names: a typo would run the node with the default."""
    for bad, words in (("map.voxel_size", "unknown parameter 'map.voxel_size'"),
                       ("tsdf.max_wait", "'tsdf' has")):
        with pytest.raises(ValueError, match=words):
            VoxmapNode("voxmap_typo", context=ros.node.context, namespace=ros.client.ns + "_t",
                       parameter_overrides=[Parameter(bad, value=0.1), Parameter("use_sim_time", value=False),
                                            Parameter("map.backend", value="torch")])


# ============================================================================ outputs
def test_mesh_occupancy_voxels_from_wall(ros):
    c = ros.client
    t0 = time.monotonic()
    ros.feed_wall("32FC1")
    ros.feed_wall("32FC1")
    ros.settle_mesh()
    state: dict = {}
    with c.lock:
        msgs = [m for _, m in c.mesh]
    for m in msgs:
        apply_markers(state, m)
    assert state, "no mesh markers received"
    for m in msgs:
        for mk in m.markers:
            assert mk.header.frame_id == "map"
            assert mk.header.stamp.sec > 0 or mk.header.stamp.nanosec > 0
    for mk in state.values():
        assert mk.type == Marker.TRIANGLE_LIST and mk.action == Marker.ADD
        assert mk.ns == "voxmap_mesh"
        assert len(mk.points) > 0 and len(mk.points) % 3 == 0
        assert len(mk.colors) == len(mk.points)
        p, col = marker_arrays(mk)
        assert np.all(np.abs(p[:, 0] - WALL_X) < 0.05), (p[:, 0].min(), p[:, 0].max())
        assert np.all(np.abs(p[:, 1]) < 1.4) and np.all((p[:, 2] > -0.1) & (p[:, 2] < 2.1))
        assert np.all((col >= 0) & (col <= 1))
        assert col[:, 0].mean() > 0.5                       # the wall is red (200 / 255)

    # OccupancyGrid: the wall's cells, and nothing occupied in front of it.
    g = wait_for(lambda: c.latest(c.grids, lambda g: np.any(np.asarray(g.data, np.int16) == 100)), WAIT_S,
                 "an occupancy grid with occupied cells")
    assert g.header.frame_id == "map"
    assert g.info.resolution == pytest.approx(VOXEL)
    d = np.asarray(g.data, np.int16).reshape(g.info.height, g.info.width)
    assert set(np.unique(d).tolist()) <= {-1, 0, 100}
    assert 0 in d, "no free cells between camera and wall"
    rows, cols = np.nonzero(d == 100)
    x = g.info.origin.position.x + (cols + 0.5) * g.info.resolution
    y = g.info.origin.position.y + (rows + 0.5) * g.info.resolution
    assert x.min() >= 1.9 and x.max() <= 2.15, (x.min(), x.max())
    assert y.min() < -1.0 and y.max() > 1.0                  # the wall spans the view
    assert not np.any(x < 1.5)

    # Occupied voxels: x, y, z, rgb in the map frame, on the wall.
    v = wait_for(lambda: c.latest(c.voxels, lambda m: m.width > 0), WAIT_S, "occupied voxels")
    assert v.header.frame_id == "map"
    assert [f.name for f in v.fields] == ["x", "y", "z", "rgb"]
    assert all(f.datatype == PointField.FLOAT32 for f in v.fields)
    pts = msg_decode.pointcloud2_to_xyz(v.fields, v.point_step, v.row_step, v.width, v.height,
                                        v.is_bigendian, v.data)
    assert len(pts) == v.width
    assert np.all((pts[:, 0] > 1.9) & (pts[:, 0] < 2.15))
    assert time.monotonic() - t0 < 60


def test_16uc1_depth_integrates(ros):
    bad = ros.count("bad_depth")
    n = ros.count("integrated_rgbd")
    ros.feed_wall("16UC1", lidar=False)
    assert ros.count("integrated_rgbd") == n + 1
    assert ros.count("bad_depth") == bad
    with ros.node._lock:
        pts, _ = ros.node.mapper.occupied_points(0)
    assert len(pts) and np.all(np.abs(pts[:, 0] - WALL_X) < 0.1)


def test_mesh_sends_only_changed_chunks_and_matches_object_path(ros):
    """The node publishes serialized CDR bytes; what arrives must equal the message-object path
    (MeshChunker.full_markers) chunk for chunk, and only chunks that changed are re-sent."""
    c, node = ros.client, ros.node
    ros.ensure_wall()
    ros.settle_mesh()

    def received_state() -> dict:
        state: dict = {}
        with c.lock:
            for _, m in c.mesh:
                apply_markers(state, m)
        return state

    def assert_matches_object_path():
        state = received_state()
        with node._mesh_lock:
            ref = node.chunker.full_markers("map", 1)
        ref_by_id = {m.id: m for m in ref.markers}
        assert set(state) == set(ref_by_id)
        for i, want in ref_by_id.items():
            got = state[i]
            assert (got.type, got.action, got.ns) == (want.type, want.action, want.ns)
            assert len(got.points) == len(want.points) and len(got.colors) == len(want.colors)
            gp, gc_ = marker_arrays(got)
            wp, wc = marker_arrays(want)
            np.testing.assert_array_equal(gp, wp)
            np.testing.assert_allclose(gc_, wc, atol=1e-6)
            assert got.pose.orientation.w == 1.0 and got.scale.x == 1.0
        return state

    assert conv.cdr_supported()
    all_ids = set(assert_matches_object_path())
    assert len(all_ids) >= 2

    # Nothing new -> no mesh message at all.
    before_pub, before_rx = ros.count("mesh_messages"), c.mesh_count()
    ros.wait_mesh_cycles(3)
    assert ros.count("mesh_messages") == before_pub
    assert c.mesh_count() == before_rx

    # A LiDAR patch on one part of the wall -> only the chunk(s) there are re-sent.
    n = ros.count("integrated_lidar")
    stamp = c.stamp()
    c.poses_around(stamp)
    c.cloud(stamp, wall_cloud(y=(0.5, 0.9), z=(-0.5, -0.2), n=(8, 6)))
    ros.wait_count("integrated_lidar", n + 1)
    ros.settle_mesh()
    with c.lock:
        new = [m for _, m in c.mesh[before_rx:]]
    assert new, "the patch produced no mesh update"
    changed = {mk.id for m in new for mk in m.markers}
    assert changed and changed < all_ids, (changed, all_ids)
    assert_matches_object_path()


def test_diagnostics_counters(ros):
    ros.ensure_wall()
    values = ros.client.diag_after(time.monotonic(), lambda v: int(v["voxels"]) > 0)
    for key in ("integrated_rgbd", "integrated_lidar", "dropped", "dropped_queue_rgbd", "dropped_queue_lidar",
                "dropped_no_pose_rgbd", "dropped_non_monotonic_rgbd", "queue_rgbd", "queue_lidar", "queue_size",
                "ms_per_frame_median", "ms_per_frame_p95", "voxels", "bricks", "map_bytes", "device", "backend",
                "received_rgbd", "bad_depth", "bad_cloud", "mesh_messages"):
        assert key in values, key
    assert int(values["integrated_rgbd"]) >= 2 and int(values["integrated_lidar"]) >= 2
    assert int(values["voxels"]) > 0 and int(values["map_bytes"]) > 0
    assert float(values["ms_per_frame_median"]) > 0
    assert values["device"] == "cpu" and values["backend"] == "torch"
    assert int(values["queue_size"]) == QUEUE_SIZE


def test_save_map_writes_its_files_without_holding_the_map(ros, monkeypatch):
    """Only the copies are taken under the map lock; compressing and writing them (seconds for a
    large map) must not stop frames from being fused meanwhile."""
    from voxmap_ros.ros import node as node_mod
    held = []

    def spy(cap, out_dir, stem=""):
        # Held by this (the service's) thread, the lock would never come free; other threads
        # (timers, frames) give it back within moments.
        free = ros.node._lock.acquire(timeout=10)
        if free:
            ros.node._lock.release()
        held.append(not free)
        return write(cap, out_dir, stem)
    write = node_mod.write_captured
    monkeypatch.setattr(node_mod, "write_captured", spy)
    ros.ensure_wall()
    res = ros.client.call(ros.client.save, Trigger.Request())
    assert res.success, res.message
    assert held == [False]


def test_save_map(ros):
    ros.ensure_wall()
    res = ros.client.call(ros.client.save, Trigger.Request())
    assert res.success, res.message
    paths = dict(part.split("=", 1) for part in res.message.split("; "))
    for key, suffix in (("map", ".npz"), ("mesh", ".ply"), ("occupancy_pgm", ".pgm"), ("occupancy_yaml", ".yaml")):
        p = Path(paths[key])
        assert p.suffix == suffix and p.is_file() and p.stat().st_size > 0, key
        assert p.parent == ros.out_dir
    assert Path(paths["mesh"]).read_bytes().startswith(b"ply\n")
    # node.load_map_path starts a node with that map (constructed only, not spun); a missing file
    # is reported and the node starts empty.
    voxels = ros.node.mapper.summary()["voxels"]
    for path, want in ((paths["map"], voxels), (str(ros.out_dir / "missing.npz"), 0)):
        other = VoxmapNode("voxmap_loaded", context=ros.node.context, namespace=ros.client.ns + "_l",
                           parameter_overrides=[Parameter("node.load_map_path", value=path),
                                                Parameter("node.pose_source", value="topic"),
                                                Parameter("map.backend", value="torch")])
        try:
            assert other.mapper.summary()["voxels"] == want
        finally:
            other.destroy_node()
    # The file's voxel size wins over the node's map.voxel_size_m, also after a run-time change.
    other = VoxmapNode("voxmap_loaded", context=ros.node.context, namespace=ros.client.ns + "_l",
                       parameter_overrides=[Parameter("node.load_map_path", value=paths["map"]),
                                            Parameter("node.pose_source", value="topic"),
                                            Parameter("map.voxel_size_m", value=2 * VOXEL),
                                            Parameter("map.backend", value="torch")])
    try:
        assert other.cfg.map.voxel_size_m == other.mapper.config.map.voxel_size_m == VOXEL
        # ... and the parameter says so (it was started with 2 * VOXEL).
        assert other.get_parameter("map.voxel_size_m").value == VOXEL
        assert other.get_parameter("tsdf.trunc_vox").value == other.mapper.config.tsdf.trunc_vox
        assert other._map_file_fixed and other._map_file_fixed[0].startswith("map.voxel_size_m=")
        assert other._on_params([Parameter("tsdf.max_weight", value=32.0)]).successful
        assert other.mapper.config.tsdf.max_weight == 32.0
        assert other.mapper.config.map.voxel_size_m == other.mapper.octree.voxel_size_m == VOXEL
        assert other.mapper.params.trunc_m == pytest.approx(other.cfg.tsdf.trunc_vox * VOXEL)
    finally:
        other.destroy_node()


def test_runtime_parameters(ros):
    c, node = ros.client, ros.node
    r = c.set_param("node.mesh_rate_hz", 5.0)
    assert r.successful, r.reason
    assert node.cfg.node.mesh_rate_hz == 5.0
    assert node.job_period_s("mesh") == 0.2
    if os.environ.get("TRITON_INTERPRET", "0") != "1":      # a Triton rasterizer cannot run on this CPU map:
        assert c.set_param("render.backend", "triton").successful      # harmless while rendering is off,
        r = c.set_param("render.rate_hz", 2.0)                          # refused when it would render
        assert not r.successful and "triton" in r.reason and node.cfg.render.rate_hz == 0.0
        assert c.set_param("render.backend", "auto").successful
    r = c.set_param("tsdf.max_weight", 32.0)                # re-derives the fusion numbers
    assert r.successful, r.reason
    assert node.mapper.config.tsdf.max_weight == 32.0

    r = c.set_param("node.mesh_rate_hz", 500.0)             # out of range
    assert not r.successful and "mesh_rate_hz" in r.reason
    r = c.set_param("map.voxel_size_m", 0.1)                # not a runtime parameter
    assert not r.successful and r.reason
    r = c.set_param("grid.z_min_m", 5.0)                    # above grid.z_max_m: config validation
    assert not r.successful and "z_max_m" in r.reason
    r = c.set_param("node.mesh_rate_hz", "fast")            # wrong type
    assert not r.successful and r.reason
    assert node.cfg.map.voxel_size_m == VOXEL and node.cfg.grid.z_min_m == 0.1
    assert node.get_parameter("map.voxel_size_m").value == VOXEL

    r = c.set_param("node.occupancy_rate_hz", 0.0)          # 0 = off
    assert r.successful and node.job_period_s("occupancy") is None
    for name, value in (("node.occupancy_rate_hz", 5.0), ("node.mesh_rate_hz", 10.0), ("tsdf.max_weight", 64.0)):
        assert c.set_param(name, value).successful
    assert node.job_period_s("occupancy") == 0.2
    assert node.job_period_s("mesh") == 0.1


# ============================================================================ bad input
def _bad_cases():
    """name -> (publish(client), counter that must go up)."""
    def depth_msg(c, **kw):
        st = c.stamp()
        c.poses_around(st)
        return st

    def wrong_encoding(c):
        st = depth_msg(c)
        c.pub_depth.publish(conv.numpy_to_image_msg(np.zeros((H, W, 3), np.uint8), "rgb8", st, CAM_FRAME))

    def size_mismatch(c):
        st = depth_msg(c)
        c.pub_depth.publish(conv.numpy_to_image_msg(np.full((H // 2, W // 2), 2.0, np.float32), "32FC1", st,
                                                    CAM_FRAME))

    def zero_size(c):
        st = depth_msg(c)
        c.pub_depth.publish(image_msg(b"", "32FC1", 0, 0, 0, st, CAM_FRAME))

    def truncated(c):
        st = depth_msg(c)
        c.pub_depth.publish(image_msg(np.full((H // 2, W), 2.0, np.float32).tobytes(), "32FC1", W, H, W * 4,
                                      st, CAM_FRAME))

    def unknown_encoding(c):
        st = depth_msg(c)
        c.pub_depth.publish(image_msg(bytes(W * H * 8), "64FC1", W, H, W * 8, st, CAM_FRAME))

    def nan_depth(c):
        st = depth_msg(c)
        c.pub_depth.publish(conv.numpy_to_image_msg(np.full((H, W), np.nan, np.float32), "32FC1", st, CAM_FRAME))

    def inf_depth(c):
        d = np.full((H, W), np.inf, np.float32)
        d[:, ::2] = -np.inf
        st = depth_msg(c)
        c.pub_depth.publish(conv.numpy_to_image_msg(d, "32FC1", st, CAM_FRAME))

    def nan_cloud(c):
        st = depth_msg(c)
        c.cloud(st, np.full((500, 3), np.nan, np.float32))

    def non_monotonic(c):               # half a second older than the frame before: dropped
        st = depth_msg(c)               # (much older would be time jumping back: accepted, see future_depth)
        c.pub_depth.publish(conv.numpy_to_image_msg(np.full((H, W), np.nan, np.float32), "32FC1", st, CAM_FRAME))
        c.pub_depth.publish(conv.numpy_to_image_msg(np.full((H, W), 2.0, np.float32), "32FC1", st - S // 2,
                                                    CAM_FRAME))

    def missing_pose(c):
        st = depth_msg(c)
        c.pub_depth.publish(conv.numpy_to_image_msg(np.full((H, W), 2.0, np.float32), "32FC1", st, "ghost_frame"))

    def cloud_without_xyz(c):
        st = depth_msg(c)
        msg = conv.xyz_rgb_to_pointcloud2(wall_cloud(), None, st, LIDAR_FRAME)
        msg.fields = [PointField(name=n, offset=4 * i, datatype=PointField.FLOAT32, count=1)
                      for i, n in enumerate("abc")]
        c.pub_cloud.publish(msg)

    def truncated_cloud(c):
        st = depth_msg(c)
        msg = conv.xyz_rgb_to_pointcloud2(wall_cloud(), None, st, LIDAR_FRAME)
        msg.data = msg.data[: len(msg.data) // 2]
        c.pub_cloud.publish(msg)

    def uncalibrated_info(c):
        c.pub_info.publish(conv.K_to_camera_info(np.diag([0.0, 0.0, 1.0]), W, H, c.stamp(), CAM_FRAME))

    year_ns = 365 * 24 * 3600 * S

    def future_depth(c):                # one frame stamped a year ahead must not stop mapping
        st = c.stamp() + year_ns
        c.pub_depth.publish(conv.numpy_to_image_msg(np.full((H, W), 2.0, np.float32), "32FC1", st, CAM_FRAME))

    def future_pose(c):                 # nor one pose stamped a year ahead (it evicted every later pose)
        c.pose(c.stamp() + year_ns, CAM_FRAME, T_cam())
        c.poses_around(c.stamp())       # time "jumps back" to now: the buffer restarts

    def bad_pose(c):
        msg = conv.matrix_to_transform_stamped(T_cam(), c.stamp(), "map", CAM_FRAME)
        q = msg.transform.rotation
        q.x = q.y = q.z = q.w = 0.0                           # all-zero quaternion
        c.pub_pose.publish(msg)
        c.pub_pose.publish(conv.matrix_to_transform_stamped(T_cam(), c.stamp(), "odom", CAM_FRAME))

    return {"wrong_encoding": (wrong_encoding, "bad_depth"), "size_mismatch": (size_mismatch, "bad_depth"),
            "zero_size": (zero_size, "bad_depth"), "truncated": (truncated, "bad_depth"),
            "unknown_encoding": (unknown_encoding, "bad_depth"),
            "nan_depth": (nan_depth, "empty_rgbd"), "inf_depth": (inf_depth, "empty_rgbd"),
            "nan_cloud": (nan_cloud, "empty_lidar"),
            "future_depth": (future_depth, "dropped_no_pose_rgbd"), "future_pose": (future_pose, "time_jumps"),
            "non_monotonic": (non_monotonic, "dropped_non_monotonic_rgbd"),
            "missing_pose": (missing_pose, "dropped_no_pose_rgbd"),
            "cloud_without_xyz": (cloud_without_xyz, "bad_cloud"), "truncated_cloud": (truncated_cloud, "bad_cloud"),
            "uncalibrated_info": (uncalibrated_info, "bad_camera_info"), "bad_pose": (bad_pose, "bad_pose")}


BAD_CASES = _bad_cases()


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_input_never_changes_the_map(ros, case):
    publish, counter = BAD_CASES[case]
    node, c = ros.node, ros.client
    ros.ensure_wall()
    ros.wait_idle()
    before = map_state(node)
    assert before[0] > 0
    n_before = ros.count(counter)
    errors = ros.count("errors")
    t_pub = time.monotonic()
    publish(c)
    ros.wait_count(counter, n_before + 1, timeout=WAIT_S + POSE_WAIT_S)
    if case == "missing_pose":
        assert time.monotonic() - t_pub >= POSE_WAIT_S * 0.9    # it waited for its pose first
    ros.wait_idle()
    assert map_state(node) == before, f"{case} changed the map"
    assert node._worker.is_alive()
    assert ros.count("errors") == errors                      # handled as bad input, not as a crash
    # Diagnostics keep coming, and count it.
    c.diag_after(time.monotonic(), lambda v: int(v[counter]) >= n_before + 1)
    if case == "uncalibrated_info":                            # the good intrinsics stay in use
        np.testing.assert_array_equal(node._K[0], K)
    # The node still maps good data afterwards.
    if case in ("wrong_encoding", "missing_pose", "cloud_without_xyz", "nan_depth", "future_depth", "future_pose"):
        n = ros.count("integrated_rgbd")
        ros.feed_wall(lidar=case == "cloud_without_xyz")
        assert ros.count("integrated_rgbd") == n + 1


def test_huge_cloud_is_subsampled(ros):
    """5 million points: decoded, subsampled to node.max_points, integrated; the node lives on.
    The payload is written in place (60 MB, no float64 temporaries) and sent by a publisher of
    history depth 1 that is destroyed afterwards, so the test does not keep it alive."""
    node, c = ros.node, ros.client
    ros.wait_idle()
    n_sub, n_int = ros.count("clouds_subsampled"), ros.count("integrated_lidar")
    n = 5_000_000
    data = array.array("B", bytes(12 * n))
    xyz = np.frombuffer(data, np.float32).reshape(n, 3)
    xyz[:, 0] = WALL_X
    rng = np.random.default_rng(1)
    for i in range(0, n, 1_000_000):                     # the wall, |y| <= 1, |z| <= 0.8 about the sensor
        j = min(n, i + 1_000_000)
        xyz[i:j, 1] = rng.random(j - i, np.float32) * 2.0 - 1.0
        xyz[i:j, 2] = rng.random(j - i, np.float32) * 1.6 - 0.8
    del xyz
    stamp = c.stamp()
    c.poses_around(stamp)
    fields = [PointField(name=k, offset=4 * i, datatype=PointField.FLOAT32, count=1) for i, k in enumerate("xyz")]
    msg = PointCloud2(header=conv._header(stamp, LIDAR_FRAME), height=1, width=n, fields=fields,
                      is_bigendian=False, point_step=12, row_step=12 * n, data=data, is_dense=True)
    del data
    pub = c.node.create_publisher(PointCloud2, "lidar/points",
                                  QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE))
    try:
        wait_for(lambda: pub.get_subscription_count() >= 1, WAIT_S, "the node to match the big-cloud publisher")
        t0 = time.monotonic()
        pub.publish(msg)
        del msg
        ros.wait_count("clouds_subsampled", n_sub + 1, timeout=60)
        ros.wait_count("integrated_lidar", n_int + 1, timeout=60)
        elapsed = time.monotonic() - t0
    finally:
        c.node.destroy_publisher(pub)
    assert node._last_cloud_points == MAX_POINTS
    c.diag_after(time.monotonic(), lambda v: int(v["last_cloud_points"]) == MAX_POINTS
                 and int(v["clouds_subsampled"]) >= n_sub + 1)
    assert node._worker.is_alive()
    assert elapsed < 30, elapsed
    gc.collect()


# ============================================================================ flood
def test_flood_drops_and_bounded_queues(ros):
    """Depth (+ colour) published far faster than the worker integrates: the bounded queues drop
    the oldest frames and count them; queues never exceed node.queue_size; memory stays flat."""
    node, c = ros.node, ros.client
    ros.ensure_wall()
    ros.wait_idle()
    ms = float(c.diag_after(time.monotonic())["ms_per_frame_median"])
    rate_hz = min(1000.0, max(200.0, 3.0 * 1000.0 / max(ms, 0.1)))   # >= 3x what the worker manages
    period = 1.0 / rate_hz
    step_ns = 1_000_000                       # the whole flood spans < node.pose_buffer_s of stamps
    duration_s, max_s = 2.0, 8.0
    n_max = int(max_s * rate_hz) + 10
    first = c.next_stamp + step_ns
    last = first + n_max * step_ns
    for s in (first - step_ns, last + step_ns):                  # poses covering the whole flood
        c.pose(s, CAM_FRAME, T_cam())
        c.pose(s, LIDAR_FRAME, T_lidar())
    c.info(first)
    depth = conv.numpy_to_image_msg(np.full((H, W), WALL_X, np.float32), "32FC1", first, CAM_FRAME)
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[..., 1] = 180
    color = conv.numpy_to_image_msg(rgb, "rgb8", first, CAM_FRAME)
    wait_for(lambda: node._poses.get(CAM_FRAME) is not None and node._poses[CAM_FRAME].newest_ns == last + step_ns,
             WAIT_S, "the flood's poses")

    drops0 = ros.count("dropped_queue_rgbd")
    integrated0 = ros.count("integrated_rgbd")
    gc.collect()
    rss0 = rss_bytes()
    max_queue = 0
    sent = 0
    t_publish = 0.0
    t0 = time.monotonic()
    next_t = t0
    stamp = first
    while True:
        now = time.monotonic()
        if now - t0 > max_s or (now - t0 > duration_s and ros.count("dropped_queue_rgbd") > drops0 + 10):
            break
        if now < next_t:
            max_queue = max(max_queue, node._frames.depths()["rgbd"])
            time.sleep(min(next_t - now, 0.002))
            continue
        next_t += period
        stamp += step_ns
        assert stamp <= last
        t_msg = conv.ns_to_stamp(stamp)
        color.header.stamp = t_msg
        depth.header.stamp = t_msg
        tp = time.perf_counter()
        c.pub_color.publish(color)
        c.pub_depth.publish(depth)
        t_publish += time.perf_counter() - tp
        sent += 1
    elapsed = time.monotonic() - t0
    c.next_stamp = last + 2 * step_ns
    ros.wait_idle(timeout=WAIT_S)
    integrated = ros.count("integrated_rgbd") - integrated0
    drops = ros.count("dropped_queue_rgbd") - drops0
    gc.collect()
    growth = rss_bytes() - rss0
    values = c.diag_after(time.monotonic(), lambda v: int(v["dropped_queue_rgbd"]) >= drops0 + drops)
    with c.lock:
        diag_queues = [int(v["queue_rgbd"]) for _, v, _ in c.diags]
        warned = any(level == 1 for ts, _, level in c.diags if ts > t0)
    print(f"\nflood: {sent} frames in {elapsed:.2f} s ({sent / elapsed:.0f} Hz, target {rate_hz:.0f} Hz), "
          f"integrated {integrated}, dropped from the queue {drops}, max queue {max_queue}, "
          f"RSS growth {growth / 2**20:.1f} MiB, worker {ms:.1f} ms/frame before, "
          f"publish {t_publish * 1e3 / max(sent, 1):.2f} ms per frame")
    assert drops > 0, "no queue drops reported"
    assert int(values["dropped_queue_rgbd"]) >= drops0 + drops
    assert max_queue <= QUEUE_SIZE
    assert max(diag_queues) <= QUEUE_SIZE
    assert warned, "diagnostics never went to WARN while frames were dropped"
    assert integrated > 0 and integrated + drops <= sent
    assert growth < 300 * 2**20, f"RSS grew by {growth / 2**20:.0f} MiB"
    assert node._worker.is_alive()


# ============================================================================ clear (last: empties the map)
def _meshed_wall_chunk_ids(ros) -> set:
    """The wall in the map and its mesh received: the ids of the chunks the client holds."""
    ros.ensure_wall()
    ros.settle_mesh()
    state: dict = {}
    with ros.client.lock:
        for _, m in ros.client.mesh:
            apply_markers(state, m)
    assert state
    return set(state)


def _mesh_messages_since(c, n_rx: int) -> list:
    with c.lock:
        return [m for _, m in c.mesh[n_rx:]]


def _deleted_ids(messages) -> set:
    return {mk.id for m in messages for mk in m.markers if mk.action == Marker.DELETE}


def test_clear_map_deletes_chunks(ros):
    node, c = ros.node, ros.client
    alive_ids = _meshed_wall_chunk_ids(ros)
    n_rx = c.mesh_count()
    t_clear_ns = node.get_clock().now().nanoseconds
    res = c.call(c.clear, Trigger.Request())
    assert res.success, res.message
    assert node.mapper.summary()["voxels"] == 0
    ros.settle_mesh()
    new = _mesh_messages_since(c, n_rx)
    assert _deleted_ids(new) == alive_ids
    for m in new:
        for mk in m.markers:
            assert mk.header.frame_id == "map" and (mk.header.stamp.sec or mk.header.stamp.nanosec)
    with node._mesh_lock:
        assert node.chunker.num_chunks == 0
    c.diag_after(time.monotonic(), lambda v: int(v["voxels"]) == 0)
    # The occupancy grid published after the clear knows nothing any more.
    g = wait_for(lambda: c.latest(c.grids, lambda g: conv.stamp_to_ns(g.header.stamp) > t_clear_ns), WAIT_S,
                 "an occupancy grid published after the clear")
    assert np.all(np.asarray(g.data, np.int16) == -1)
    assert g.header.frame_id == "map"


def test_chunks_removed_while_a_subscriber_joins_are_still_deleted(ros):
    """A mesh cycle that re-sends every chunk for a new subscriber must still send the deletions of
    that cycle: the subscribers that had the removed chunks would keep them forever."""
    node, c = ros.node, ros.client
    alive_ids = _meshed_wall_chunk_ids(ros)
    pub = node.pub_mesh
    real_count = pub.get_subscription_count
    rate = node.cfg.node.mesh_rate_hz
    assert node.set_parameters([Parameter("node.mesh_rate_hz", value=0.0)])[0].successful
    try:
        with node._mesh_lock:             # a mesh cycle still running is over
            pass
        n_rx = c.mesh_count()
        res = c.call(c.clear, Trigger.Request())
        assert res.success, res.message
        pub.get_subscription_count = lambda: real_count() + 1          # someone joins in this cycle
        node._publish_mesh()
    finally:
        pub.get_subscription_count = real_count
        assert node.set_parameters([Parameter("node.mesh_rate_hz", value=rate)])[0].successful
    wait_for(lambda: c.mesh_count() > n_rx, WAIT_S, "the mesh message of that cycle")
    ros.settle_mesh()
    new = _mesh_messages_since(c, n_rx)
    assert _deleted_ids(new) == alive_ids


def test_body_frame_picks_the_body_among_several_pose_streams(ros):
    """A sensor frame without a pose stream of its own takes the body pose and the extrinsic. With
    several child frames on the pose topic, node.body_frame says which is the body; unset, the
    frame waits (and the node says why) instead of taking some other sensor's pose."""
    from voxmap_ros.poses import PoseBuffer
    from voxmap_ros.ros.node import Pending
    node = ros.node
    saved = node._poses, node.cfg.node.body_frame
    try:
        body, other = PoseBuffer(), PoseBuffer()
        T_body = np.eye(4); T_body[:3, 3] = [1.0, 2.0, 3.0]
        for st in (0, S):
            body.add(st, T_body)
            other.add(st, np.eye(4))
        node._poses = {"base_link": body, "some_other_frame": other}
        item = Pending("rgbd", S // 2, "camera_optical", {}, time.monotonic())
        node.cfg.node.body_frame = ""
        assert node._pose_for(item) == (None, "wait")
        node.cfg.node.body_frame = "base_link"
        T, status = node._pose_for(item)
        assert status == "ok"
        np.testing.assert_allclose(T, T_body @ node._extrinsic["rgbd"])
        node._poses = {"base_link": body}                  # one stream: it is the body
        node.cfg.node.body_frame = ""
        assert node._pose_for(item)[1] == "ok"
    finally:
        node._poses, node.cfg.node.body_frame = saved


def test_a_sensor_frame_without_a_name_still_takes_the_extrinsic(ros):
    """A PoseStamped stream is the body pose, held under the child frame ''. A depth image or cloud
    whose header.frame_id is empty must not read that as a transform straight to the sensor: it
    takes the body pose and the configured extrinsic like any other unnamed sensor frame."""
    from voxmap_ros.poses import PoseBuffer
    from voxmap_ros.ros.node import Pending
    node = ros.node
    saved = node._poses, node._extrinsic["rgbd"]
    try:
        body = PoseBuffer()
        T_body = np.eye(4); T_body[:3, 3] = [1.0, 2.0, 3.0]
        for st in (0, S):
            body.add(st, T_body)
        node._poses = {"": body}
        node._extrinsic["rgbd"] = np.eye(4)
        node._extrinsic["rgbd"][:3, 3] = [0.0, 0.0, 0.5]
        T, status = node._pose_for(Pending("rgbd", S // 2, "", {}, time.monotonic()))
        assert status == "ok"
        np.testing.assert_allclose(T, T_body @ node._extrinsic["rgbd"])
    finally:
        node._poses, node._extrinsic["rgbd"] = saved


def test_pose_buffers_hold_pose_buffer_s_at_high_rates(ros):
    """node.pose_buffer_s (10 s here) of poses at 400 Hz: 4001 samples, all kept."""
    node = ros.node
    child = "fast_imu_frame"
    t0 = node.get_clock().now().nanoseconds - 10 * S
    try:
        for i in range(4001):
            msg = conv.matrix_to_transform_stamped(np.eye(4), t0 + i * S // 400, "map", child)
            node._on_pose(msg)
        buf = node._poses[child]
        assert len(buf) == 4001 and buf.newest_ns - buf.oldest_ns == 10 * S
    finally:
        node._poses.pop(child, None)


def test_warnings_are_throttled_per_kind():
    """rclpy throttles per call site; one kind of bad input must not hide the others."""
    import types
    lines = []
    stub = types.SimpleNamespace(_count_lock=threading.Lock(), _last_log={},
                                 get_logger=lambda: types.SimpleNamespace(warning=lines.append))
    for _ in range(3):
        for key in ("bad_depth", "bad_pose", "bad_cloud"):
            VoxmapNode._log_throttled(stub, key, key)
    assert lines == ["bad_depth", "bad_pose", "bad_cloud"]


def test_time_going_back_restarts_the_timeline(ros):
    """Stamps far (node.pose_buffer_s) behind the newest: one alone is a stray stamp, dropped; two
    in a row mean time went back (a bag looped) and mapping restarts from them. The node clock
    going back (use_sim_time, a bag played again) restarts everything at once."""
    node, c = ros.node, ros.client
    ros.ensure_wall()
    ros.wait_idle()
    n_int, n_jumps = ros.count("integrated_rgbd"), ros.count("time_jumps")
    n_bad_pose, n_nonmono = ros.count("bad_pose"), ros.count("dropped_non_monotonic_rgbd")
    old = c.next_stamp - 30 * S
    for st in (old, old + S // 10):
        for s_ in (st - 20_000_000, st + 20_000_000):
            c.pose(s_, CAM_FRAME, T_cam())
    ros.wait_count("time_jumps", n_jumps + 1)                     # the second old pose restarted the buffer
    assert ros.count("bad_pose") == n_bad_pose + 1                # the first was taken for a stray stamp
    c.info(old)
    c.rgbd(old)                                                   # a stray stamp...
    c.rgbd(old + S // 10)                                         # ...until a second confirms the jump
    ros.wait_count("integrated_rgbd", n_int + 1)
    assert ros.count("dropped_non_monotonic_rgbd") == n_nonmono + 1
    assert ros.count("time_jumps") == n_jumps + 2

    class Jump:
        class delta:
            nanoseconds = -5 * S
    node._on_clock_jump(Jump())
    assert ros.count("time_jumps") == n_jumps + 3
    assert node.pending_frames() == 0 and all(len(b) == 0 for b in node._poses.values())
    ros.feed_wall()                                               # and mapping goes on
