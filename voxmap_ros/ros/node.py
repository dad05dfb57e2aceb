"""VoxmapNode: callbacks convert and enqueue; a worker integrates; timers publish.

No map math here: everything goes through `Mapper`. Threading: sensor callbacks only decode
messages into numpy and append to bounded queues; one worker thread owns map updates; timers take
the map lock briefly to pull mesh / occupancy snapshots and publish outside the lock.
"""
from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PoseStamped, TransformStamped
from nav_msgs.msg import OccupancyGrid, Odometry
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.node import Node
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data)
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_srvs.srv import Trigger
from visualization_msgs.msg import MarkerArray

from ..config import VoxmapConfig
from ..core.mapper import Mapper
from ..poses import PoseBuffer, static_extrinsic
from ..types import Frame
from . import conversions as conv
from .params import declare_config, validate_changes

MAP_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                     history=HistoryPolicy.KEEP_LAST)
MESH_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL, history=HistoryPolicy.KEEP_LAST)
RELIABLE_SENSOR_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
WARN_THROTTLE_S = 5.0
COLOR_WAIT_S = 0.2           # how long a depth image may wait for its colour partner (wall time)


@dataclass
class Pending:
    """A decoded sensor message waiting for its pose."""
    kind: str                 # "rgbd" | "lidar"
    stamp_ns: int
    frame_id: str
    data: dict
    enqueued_s: float


class Counters(collections.Counter):
    """Event counts reported in diagnostics (received, integrated, dropped_*, bad_*)."""


class VoxmapNode(Node):
    """The mapping node. See README "ROS 2 node" for topics, services and parameters."""

    def __init__(self, node_name: str = "voxmap", *, config: VoxmapConfig | None = None, **kwargs):
        super().__init__(node_name, **kwargs)
        self.cfg = declare_config(self, config)
        self.counters = Counters()
        self._lock = threading.Lock()                     # guards the mapper
        self._qlock = threading.Lock()                    # guards the queues
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._queues = {"rgbd": collections.deque(), "lidar": collections.deque()}
        self._colors: collections.deque = collections.deque(maxlen=30)
        self._K: tuple[np.ndarray, int, int] | None = None
        self._last_stamp = {"rgbd": -1, "lidar": -1}
        self._ms_recent: collections.deque = collections.deque(maxlen=200)
        self._latency_ms: collections.deque = collections.deque(maxlen=200)
        self._last_integrated_stamp_ns = 0

        self.mapper = self._make_mapper()
        self.chunker = conv.MeshChunker(self.cfg.node.mesh_chunk_level)
        self._mesh_subs_seen = 0
        self._setup_poses()
        self._setup_io()
        self._timers: dict[str, object] = {}
        self._make_timers()
        self.add_on_set_parameters_callback(self._on_params)
        self._worker = threading.Thread(target=self._work_loop, name="voxmap_worker", daemon=True)
        self._worker.start()
        self.get_logger().info(
            f"voxmap ready: voxel {self.cfg.map.voxel_size_m} m, backend {self.mapper.backend}, "
            f"poses from {self._pose_mode}, map frame '{self.map_frame}'")

    # ------------------------------------------------------------------ set-up
    @property
    def map_frame(self) -> str:
        return self.cfg.map.frame_id

    def _make_mapper(self) -> Mapper:
        path = self.cfg.node.load_map_path
        if path:
            try:
                m = Mapper.load(path, device=self.cfg.map.device)
                self.get_logger().info(f"loaded map {path}: {m.octree.num_bricks} bricks")
                return m
            except ValueError as e:
                self.get_logger().error(f"could not load map '{path}': {e}; starting empty")
        return Mapper(self.cfg)

    def _setup_poses(self) -> None:
        mode = self.cfg.node.pose_source
        self._tf_buffer = None
        if mode in ("auto", "tf"):
            try:
                import tf2_ros
                self._tf_buffer = tf2_ros.Buffer()
                self._tf_listener = tf2_ros.TransformListener(self._tf_buffer, self)
                mode = "tf"
            except ImportError:
                if mode == "tf":
                    raise ValueError("node.pose_source is 'tf' but tf2_ros is not importable; use 'topic'")
                mode = "topic"
        self._pose_mode = mode
        # Pose-topic samples per child frame: '' for PoseStamped (the body); TransformStamped and
        # Odometry carry their child frame, so a stream of per-sensor transforms works like TF.
        self._poses: dict[str, PoseBuffer] = {}
        self._extrinsic = {"rgbd": static_extrinsic(self.cfg.node.camera_extrinsic[:3], self.cfg.node.camera_extrinsic[3:]),
                           "lidar": static_extrinsic(self.cfg.node.lidar_extrinsic[:3], self.cfg.node.lidar_extrinsic[3:])}
        if mode == "topic":
            msg_type = {"PoseStamped": PoseStamped, "TransformStamped": TransformStamped,
                        "Odometry": Odometry}[self.cfg.node.pose_topic_type]
            self.create_subscription(msg_type, self.cfg.node.pose_topic, self._on_pose, 200)

    def _setup_io(self) -> None:
        n = self.cfg.node
        qos = qos_profile_sensor_data if n.sensor_qos == "sensor_data" else RELIABLE_SENSOR_QOS
        group = ReentrantCallbackGroup()
        if n.depth_topic:
            self.create_subscription(Image, n.depth_topic, self._on_depth, qos, callback_group=group)
            self.create_subscription(CameraInfo, n.camera_info_topic, self._on_info, qos, callback_group=group)
            if n.color_topic:
                self.create_subscription(Image, n.color_topic, self._on_color, qos, callback_group=group)
        if n.cloud_topic:
            self.create_subscription(PointCloud2, n.cloud_topic, self._on_cloud, qos, callback_group=group)
        self.pub_mesh = self.create_publisher(MarkerArray, "~/mesh", MESH_QOS)
        self.pub_grid = self.create_publisher(OccupancyGrid, "~/occupancy", MAP_QOS)
        self.pub_voxels = self.create_publisher(PointCloud2, "~/occupied_voxels", MAP_QOS)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        services = MutuallyExclusiveCallbackGroup()
        self.create_service(Trigger, "~/save_map", self._on_save, callback_group=services)
        self.create_service(Trigger, "~/clear_map", self._on_clear, callback_group=services)

    def _make_timers(self) -> None:
        for t in self._timers.values():
            self.destroy_timer(t)
        self._timers = {}
        group = MutuallyExclusiveCallbackGroup()
        n = self.cfg.node
        for name, rate, cb in (("mesh", n.mesh_rate_hz, self._publish_mesh),
                               ("occupancy", n.occupancy_rate_hz, self._publish_occupancy),
                               ("voxels", n.occupied_voxels_rate_hz, self._publish_voxels),
                               ("diagnostics", n.diagnostics_rate_hz, self._publish_diagnostics),
                               ("prune", n.prune_rate_hz, self._prune)):
            if rate > 0:
                # Wall-clock timers: publishing must go on when sim time pauses (bag paused).
                self._timers[name] = self.create_timer(1.0 / rate, cb, callback_group=group,
                                                       clock=rclpy.clock.Clock(clock_type=rclpy.clock.ClockType.STEADY_TIME))

    # ------------------------------------------------------------------ callbacks: convert + enqueue
    def _bad(self, what: str, err: Exception | str) -> None:
        self.counters[f"bad_{what}"] += 1
        self.get_logger().warn(f"{what}: {err}", throttle_duration_sec=WARN_THROTTLE_S)

    def _on_info(self, msg: CameraInfo) -> None:
        try:
            self._K = (conv.camera_info_to_K(msg), int(msg.width), int(msg.height))
        except ValueError as e:
            self._bad("camera_info", e)

    def _on_color(self, msg: Image) -> None:
        try:
            rgb = conv.image_msg_to_numpy(msg)
            if rgb.ndim != 3:
                raise ValueError(f"colour image on '{self.cfg.node.color_topic}' decoded to shape {rgb.shape}, "
                                 "expected (H, W, 3)")
            self._colors.append((conv.stamp_to_ns(msg.header.stamp), rgb))
        except ValueError as e:
            self._bad("color", e)

    def _on_depth(self, msg: Image) -> None:
        self.counters["received_rgbd"] += 1
        try:
            depth = conv.image_msg_to_numpy(msg)
            if depth.ndim != 2 or depth.dtype not in (np.uint16, np.float32):
                raise ValueError(f"depth encoding '{msg.encoding}' is not 16UC1/mono16 (mm) or 32FC1 (m)")
            if self._K is None:
                raise ValueError(f"no CameraInfo yet on '{self.cfg.node.camera_info_topic}'")
            K, w, h = self._K
            if (w, h) != (depth.shape[1], depth.shape[0]):
                raise ValueError(f"depth image is {depth.shape[1]}x{depth.shape[0]} but CameraInfo says {w}x{h}")
            stamp = conv.stamp_to_ns(msg.header.stamp)
            self._enqueue(Pending("rgbd", stamp, msg.header.frame_id, {"depth": depth, "K": K}, time.monotonic()))
        except ValueError as e:
            self._bad("depth", e)

    def _on_cloud(self, msg: PointCloud2) -> None:
        self.counters["received_lidar"] += 1
        try:
            pts = conv.pointcloud2_msg_to_xyz(msg)
            if len(pts) > self.cfg.node.max_points:
                self.counters["clouds_subsampled"] += 1
                self.get_logger().warn(f"cloud of {len(pts)} points subsampled to node.max_points="
                                       f"{self.cfg.node.max_points}", throttle_duration_sec=WARN_THROTTLE_S)
                idx = np.random.default_rng(0).choice(len(pts), self.cfg.node.max_points, replace=False)
                pts = pts[np.sort(idx)]
            stamp = conv.stamp_to_ns(msg.header.stamp)
            self._enqueue(Pending("lidar", stamp, msg.header.frame_id, {"points": pts}, time.monotonic()))
        except ValueError as e:
            self._bad("cloud", e)

    def _on_pose(self, msg) -> None:
        try:
            stamp, frame, _child, T = conv.pose_msg_to_matrix(msg)
            if frame and frame != self.map_frame:
                raise ValueError(f"pose is in frame '{frame}', expected the map frame '{self.map_frame}'")
            buf = self._poses.get(_child or "")
            if buf is None:
                buf = self._poses.setdefault(_child or "", PoseBuffer(max_age_s=self.cfg.node.pose_buffer_s))
            buf.add(stamp, T)
            self._wake.set()
        except ValueError as e:
            self._bad("pose", e)

    def _enqueue(self, item: Pending) -> None:
        if item.stamp_ns < self._last_stamp[item.kind]:
            self.counters[f"dropped_non_monotonic_{item.kind}"] += 1
            self.get_logger().warn(f"{item.kind} stamp {item.stamp_ns} is older than the previous one "
                                   f"({self._last_stamp[item.kind]}); dropped", throttle_duration_sec=WARN_THROTTLE_S)
            return
        self._last_stamp[item.kind] = item.stamp_ns
        with self._qlock:
            q = self._queues[item.kind]
            q.append(item)
            while len(q) > self.cfg.node.queue_size:
                q.popleft()
                self.counters[f"dropped_queue_{item.kind}"] += 1
        self._wake.set()

    # ------------------------------------------------------------------ worker
    def _work_loop(self) -> None:
        while not self._stop.is_set():
            item = self._next_ready()
            if item is None:
                self._wake.wait(0.02)
                self._wake.clear()
                continue
            self._integrate(item)

    def _next_ready(self) -> Pending | None:
        """Oldest queued item whose pose is available; drops items that waited too long."""
        with self._qlock:
            heads = [q[0] for q in self._queues.values() if q]
        for item in sorted(heads, key=lambda x: x.stamp_ns):
            T, status = self._pose_for(item)
            waited = time.monotonic() - item.enqueued_s
            if T is None and (status == "too_old" or waited > self.cfg.node.pose_wait_s):
                self._pop(item)
                self.counters[f"dropped_no_pose_{item.kind}"] += 1
                self.get_logger().warn(f"no pose for {item.kind} frame '{item.frame_id}' at {item.stamp_ns} ns "
                                       f"({status}); dropped", throttle_duration_sec=WARN_THROTTLE_S)
                continue
            if T is None:
                continue
            if item.kind == "rgbd" and not self._attach_color(item, waited):
                continue
            self._pop(item)
            item.data["T"] = T
            return item
        return None

    def _pop(self, item: Pending) -> None:
        with self._qlock:
            q = self._queues[item.kind]
            if q and q[0] is item:
                q.popleft()

    def _attach_color(self, item: Pending, waited_s: float) -> bool:
        """Pair the depth image with the nearest colour image; False = wait for it a little longer."""
        if not self.cfg.node.color_topic or "rgb" in item.data:
            return True
        tol = int(self.cfg.node.color_sync_tolerance_s * 1e9)
        best = None
        for stamp, rgb in list(self._colors):
            d = abs(stamp - item.stamp_ns)
            if d <= tol and (best is None or d < best[0]):
                best = (d, rgb)
        if best is not None:
            rgb = best[1]
            if rgb.shape[:2] != item.data["depth"].shape:
                self._bad("color", f"colour image {rgb.shape[1]}x{rgb.shape[0]} does not match depth "
                                   f"{item.data['depth'].shape[1]}x{item.data['depth'].shape[0]}; fused without colour")
                rgb = None
            item.data["rgb"] = rgb
            return True
        newest = self._colors[-1][0] if self._colors else -1
        if newest < item.stamp_ns and waited_s < COLOR_WAIT_S:
            return False
        item.data["rgb"] = None
        self.counters["rgbd_without_color"] += 1
        return True

    def _pose_for(self, item: Pending) -> tuple[np.ndarray | None, str]:
        if self._pose_mode == "tf":
            return self._tf_pose(item)
        buffers = dict(self._poses)
        if item.frame_id in buffers:                 # a transform straight to the sensor frame
            buf, T_body_sensor = buffers[item.frame_id], np.eye(4)
        else:                                        # the body pose and the static extrinsic
            buf = buffers.get("") or (next(iter(buffers.values())) if len(buffers) == 1 else None)
            T_body_sensor = self._extrinsic[item.kind]
        if buf is None:
            return None, "wait"
        status = buf.status(item.stamp_ns)
        if status != "ok":
            return None, status
        T_map_body = buf.lookup(item.stamp_ns)
        if T_map_body is None:
            return None, "wait"
        return T_map_body @ T_body_sensor, "ok"

    def _tf_pose(self, item: Pending):
        import tf2_ros
        from rclpy.duration import Duration
        from rclpy.time import Time
        try:
            tf = self._tf_buffer.lookup_transform(self.map_frame, item.frame_id,
                                                  Time(nanoseconds=item.stamp_ns),
                                                  timeout=Duration(seconds=self.cfg.node.tf_timeout_s))
        except tf2_ros.ExtrapolationException as e:
            return None, "too_old" if "past" in str(e) else "wait"
        except (tf2_ros.LookupException, tf2_ros.ConnectivityException, tf2_ros.TransformException):
            return None, "wait"
        _s, _f, _c, T = conv.pose_msg_to_matrix(tf)
        return T, "ok"

    def _integrate(self, item: Pending) -> None:
        d = item.data
        if item.kind == "rgbd":
            frame = Frame(T_W_S=d["T"], depth=d["depth"], rgb=d.get("rgb"), K=d["K"], stamp_ns=item.stamp_ns,
                          frame_id=item.frame_id)
        else:
            frame = Frame(T_W_S=d["T"], points=d["points"], stamp_ns=item.stamp_ns, frame_id=item.frame_id)
        t0 = time.perf_counter()
        try:
            with self._lock:
                self.mapper.integrate(frame)
        except ValueError as e:
            self._bad(item.kind, e)
            return
        except Exception as e:                    # never let one frame kill the worker
            self.counters[f"error_{item.kind}"] += 1
            self.get_logger().error(f"integration of {item.kind} frame failed: {e!r}",
                                    throttle_duration_sec=WARN_THROTTLE_S)
            return
        self._ms_recent.append((time.perf_counter() - t0) * 1000.0)
        self.counters[f"integrated_{item.kind}"] += 1
        self._last_integrated_stamp_ns = max(self._last_integrated_stamp_ns, item.stamp_ns)

    # ------------------------------------------------------------------ publishing
    def _stamp_now(self) -> int:
        return self.get_clock().now().nanoseconds

    def _publish_mesh(self) -> None:
        with self._lock:
            update = self.mapper.update_mesh()
            store = self.mapper.mesh_store()
        stamp = self._stamp_now()
        subs = self.pub_mesh.get_subscription_count()
        if subs > self._mesh_subs_seen:             # a late subscriber gets every chunk once
            self.chunker.update(store, update.remeshed_keys, update.removed_keys)
            msg = self.chunker.full_markers(self.map_frame, stamp)
        else:
            msg = self.chunker.update(store, update.remeshed_keys, update.removed_keys, self.map_frame, stamp)
        self._mesh_subs_seen = subs
        if msg.markers:
            self.pub_mesh.publish(msg)
            self.counters["mesh_messages"] += 1

    def _publish_occupancy(self) -> None:
        with self._lock:
            grid = self.mapper.occupancy_grid()
        self.pub_grid.publish(conv.grid_to_occupancy_grid(grid, self._stamp_now(), self.map_frame))

    def _publish_voxels(self) -> None:
        with self._lock:
            pts, cols = self.mapper.occupied_points(self.cfg.node.occupied_voxels_level)
        self.pub_voxels.publish(conv.xyz_rgb_to_pointcloud2(pts, cols, self._stamp_now(), self.map_frame))

    def _prune(self) -> None:
        with self._lock:
            self.mapper.prune()

    def diagnostics_values(self) -> dict:
        with self._lock:
            s = self.mapper.summary()
        with self._qlock:
            depths = {k: len(q) for k, q in self._queues.items()}
        ms = np.asarray(self._ms_recent) if self._ms_recent else np.zeros(0)
        values = dict(self.counters)
        values.update({"queue_rgbd": depths["rgbd"], "queue_lidar": depths["lidar"],
                       "ms_per_frame_median": float(np.median(ms)) if ms.size else 0.0,
                       "ms_per_frame_p95": float(np.percentile(ms, 95)) if ms.size else 0.0,
                       "voxels": s["voxels"], "bricks": s["bricks"], "map_bytes": s["map_bytes"],
                       "device": s["device"], "backend": s["backend"], "pose_source": self._pose_mode})
        return values

    def _publish_diagnostics(self) -> None:
        values = self.diagnostics_values()
        dropped = sum(v for k, v in values.items() if k.startswith("dropped_"))
        level = DiagnosticStatus.OK if dropped == 0 else DiagnosticStatus.WARN
        text = "mapping" if dropped == 0 else f"{dropped} frames dropped"
        self.pub_diag.publish(conv.make_diagnostics(f"{self.get_name()}: map", "voxmap", level, text, values,
                                                    self._stamp_now()))

    # ------------------------------------------------------------------ services and parameters
    def _on_save(self, request, response):
        out = Path(self.cfg.node.output_dir).expanduser()
        try:
            with self._lock:
                paths = self.mapper.save_outputs(out)
            response.success = True
            response.message = "; ".join(f"{k}={v}" for k, v in paths.items())
        except Exception as e:                    # disk full, permissions...: answer, don't die
            response.success = False
            response.message = f"save failed: {e}"
        return response

    def _on_clear(self, request, response):
        with self._lock:
            self.mapper.clear()
            update = self.mapper.update_mesh()
            store = self.mapper.mesh_store()
        msg = self.chunker.update(store, update.remeshed_keys, update.removed_keys, self.map_frame, self._stamp_now())
        if msg.markers:
            self.pub_mesh.publish(msg)
        response.success = True
        response.message = "map cleared"
        return response

    def _on_params(self, params) -> SetParametersResult:
        new, result = validate_changes(self.cfg, params)
        if new is None:
            return result
        rates_changed = any(p.name.endswith("_rate_hz") for p in params)
        with self._lock:
            self.cfg = new
            self.mapper.config = new
            self.mapper.refresh_params()
        if rates_changed:
            # Timers are re-created after this callback returns (not from inside it), once.
            holder = []

            def rebuild():
                self.destroy_timer(holder[0])
                self._make_timers()
            holder.append(self.create_timer(0.0, rebuild))
        return result

    def destroy_node(self) -> None:
        self._stop.set()
        self._wake.set()
        self._worker.join(timeout=5.0)
        super().destroy_node()


def main(args=None) -> None:
    rclpy.init(args=args)
    node = None
    try:
        node = VoxmapNode()
        executor = rclpy.executors.MultiThreadedExecutor(num_threads=3)
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, rclpy.executors.ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
