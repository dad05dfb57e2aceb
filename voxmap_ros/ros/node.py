"""VoxmapNode: callbacks convert and enqueue; a worker integrates; timers publish.

No map math here: everything goes through `Mapper`. Threading: sensor callbacks only decode
messages into numpy and append to bounded queues; one worker thread owns map updates; timers take
the map lock briefly to pull mesh / occupancy snapshots and publish outside the lock.

Locks (never taken in the opposite order): `_mesh_lock` (the mesh chunker) -> `_lock` (the mapper)
-> `_calls_lock` (the worker's call list) -> `_count_lock` (the counters). The frame queues
(frame_queues) take their own locks inside their methods and never call back into the node. The
mesh job's map read runs on the worker itself, between two frames (`_on_worker`).

Outputs run on a thread of their own ("outputs") that keeps their schedule (schedule.JobSchedule,
no rclpy timers), so the executor only runs the short sensor, pose and service callbacks. A long
mesh update or render therefore never holds an executor thread (measured before this: the main
executor thread used most of a core during mesh updates, starving the sensor callbacks of a
2-core machine), and the executor walks fewer entities per wait.

The render job (~/render/*) holds `_lock` only while it copies the TSDF of the bricks in the
view's frustum (outputs.map_snapshot: ~1 ms for a room seen at 5 cm); building the renderable
cells and rasterizing run on the copy.
"""
from __future__ import annotations

import collections
import contextlib
import copy
import functools
import os
import math
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rclpy
import rclpy.executors
import torch
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PoseStamped, TransformStamped
from nav_msgs.msg import OccupancyGrid, Odometry
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import JumpThreshold
from rclpy.duration import Duration
from rclpy.event_handler import PublisherEventCallbacks, SubscriptionEventCallbacks
from rclpy.node import Node
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data)
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_srvs.srv import Trigger
from visualization_msgs.msg import MarkerArray

from ..config import VoxmapConfig
from ..core.mapper import MAP_FILE_FIELDS, Mapper, map_file_overrides, with_map_file_fields
from ..outputs import (View, capture_outputs, fixed_view, map_snapshot, render_snapshot, scaled_view,
                       write_captured)
from ..poses import PoseBuffer, static_extrinsic
from ..render import check_backend as render_check_backend
from ..types import Frame
from . import conversions as conv
from .frame_queues import ColorBuffer, FrameQueues, StampJumps
from .params import declare_config, validate_changes
from .schedule import JobSchedule

MAP_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                     history=HistoryPolicy.KEEP_LAST)
# Mesh messages are incremental (changed chunks only), so a subscriber must see each of them: reliable,
# with some history for a slow reader. A new subscriber is sent every chunk once (see _publish_mesh);
# the transient-local history only has to bridge the moment until then, and is kept short because
# a full re-send can be large and the writer keeps `depth` messages alive.
MESH_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL, history=HistoryPolicy.KEEP_LAST)
RELIABLE_SENSOR_QOS_MIN_DEPTH = 10


def reliable_sensor_qos(queue_size: int) -> QoSProfile:
    """Reliable sensor QoS whose reader history is at least twice the node's queue: a burst the
    executor has not taken yet then lands in the node's queue, where drops are counted, instead of
    being overwritten silently inside DDS."""
    return QoSProfile(depth=max(RELIABLE_SENSOR_QOS_MIN_DEPTH, 2 * int(queue_size)),
                      reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
# Rendered views: the latest is what matters; reliable (works for reliable and best-effort readers).
RENDER_QOS = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
WARN_THROTTLE_S = 5.0
POSE_MAX_HZ = 1000           # pose rate the pose buffers are sized for (node.pose_buffer_s of samples)
MIN_POSE_SAMPLES = 2000
COLOR_MAX_HZ = 60            # colour rate the colour buffer is sized for (see _color_cap)
COLOR_WAIT_S = 0.2           # how long a depth image may wait for its colour partner (wall time)
IDLE_WAIT_S = 0.02           # worker poll period while frames wait for their pose
CLOCK_JUMP_BACK_NS = 100_000_000   # the node clock going back by more than this restarts the timeline
KINDS = ("rgbd", "lidar")
# Counters always reported (zero until something happens), so a monitor can rely on the keys.
BASE_COUNTERS = tuple(f"{what}_{k}" for what in ("received", "integrated", "dropped_queue", "dropped_no_pose",
                                                 "dropped_non_monotonic") for k in KINDS) + (
    "bad_depth", "bad_color", "bad_camera_info", "bad_cloud", "bad_pose", "bad_rgbd", "bad_lidar", "bad_qos",
    "clouds_subsampled", "rgbd_without_color", "received_pose", "mesh_messages", "renders", "errors",
    "empty_rgbd", "empty_lidar", "time_jumps")


@dataclass
class Pending:
    """A decoded sensor message waiting for its pose."""
    kind: str                 # "rgbd" | "lidar"
    stamp_ns: int
    frame_id: str
    data: dict
    enqueued_s: float


@dataclass
class CameraView:
    """The camera of the latest integrated RGB-D frame (for render.viewpoint 'latest_camera')."""
    K: np.ndarray
    T_W_C: np.ndarray
    width: int
    height: int
    frame_id: str
    stamp_ns: int


@dataclass
class _WorkerCall:
    """A map read that an output job hands to the worker thread (see VoxmapNode._on_worker)."""
    job: str
    fn: object
    done: threading.Event = field(default_factory=threading.Event)
    result: object = None
    error: Exception | None = None


class Counters(collections.Counter):
    """Event counts reported in diagnostics (received, integrated, dropped_*, bad_*)."""


def _guarded(what: str):
    """Last line of defence for executor callbacks: an unexpected exception is counted and logged,
    never raised into the executor (which would stop spinning, i.e. kill the node)."""
    def deco(fn):
        @functools.wraps(fn)
        def wrapper(self, *args, **kwargs):
            try:
                return fn(self, *args, **kwargs)
            except Exception as e:                  # noqa: BLE001 - that is the point
                self._count("errors")
                self._count(f"error_{what}")
                self._log_throttled(f"error_{what}", f"{what} failed: {e!r}", "error")
                return None
        return wrapper
    return deco


class VoxmapNode(Node):
    """The mapping node. See README "ROS 2 node" for topics, services and parameters."""

    def __init__(self, node_name: str = "voxmap", *, config: VoxmapConfig | None = None, **kwargs):
        super().__init__(node_name, **kwargs)
        self.cfg = self._declare_parameters(config or VoxmapConfig())
        self.counters = Counters({k: 0 for k in BASE_COUNTERS})
        self._count_lock = threading.Lock()                 # guards the counters
        self._lock = threading.Lock()                     # guards the mapper
        self._calls_lock = threading.Lock()               # guards the worker's call list
        self._mesh_lock = threading.Lock()                # guards the chunker (mesh timer vs. services)
        self._wake = threading.Event()
        self._jobs_cond = threading.Condition()           # guards _schedule; notified on rate changes and stop
        self._stop = threading.Event()
        self._jumps = StampJumps()                        # stray stamp vs time going back, per stream
        self._frames = FrameQueues(KINDS, self._jumps)
        self._worker_calls: list[_WorkerCall] = []         # map reads waiting for the worker (under _calls_lock)
        self._colors = ColorBuffer()                      # colour images for queued depth frames
        self._K: tuple[np.ndarray, int, int] | None = None
        self._last_log: dict[str, float] = {}              # throttle key -> monotonic time of its last log line
        self._ms_recent: collections.deque = collections.deque(maxlen=200)
        self._latency_ms: collections.deque = collections.deque(maxlen=200)
        self._pose_lag_ms: collections.deque = collections.deque(maxlen=200)
        self._lock_wait_ms: collections.deque = collections.deque(maxlen=200)   # worker waiting for the map lock
        self._lock_hold_ms: dict[str, float] = {}        # output job -> longest map-lock hold since last report
        self._last_integrated_stamp_ns = 0
        self._camera: CameraView | None = None            # latest integrated RGB-D camera (under _lock)
        self._render_ms: collections.deque = collections.deque(maxlen=50)
        self._render_lock_ms: collections.deque = collections.deque(maxlen=50)
        self._last_cloud_points = 0
        self._dropped_at_last_diag = 0
        self._bad_at_last_diag = 0
        self._rng = np.random.default_rng(0)

        self.mapper = self._make_mapper()
        try:
            render_check_backend(self.cfg.render.backend, self.mapper.device)
        except ValueError as e:              # fatal only when rendering is on
            if self.cfg.render.rate_hz > 0:
                raise
            self.get_logger().warning(f"render.backend: {e} (rendering is off: render.rate_hz 0)")
        self.chunker = conv.MeshChunker(self.cfg.node.mesh_chunk_level)
        self._mesh_subs_seen = 0
        self._mesh_raw = True                             # publish the mesh as serialized bytes
        self._setup_poses()
        # With use_sim_time a bag played again (or looped) sends /clock back: restart the timeline.
        self._clock_jump = self.get_clock().create_jump_callback(
            JumpThreshold(min_forward=None, min_backward=Duration(nanoseconds=-CLOCK_JUMP_BACK_NS),
                          on_clock_change=False), post_callback=self._on_clock_jump)
        self._setup_io()
        self._schedule = JobSchedule(self._rates(), time.monotonic())
        self.add_on_set_parameters_callback(self._on_params)
        self._worker = threading.Thread(target=self._work_loop, name=f"voxmap_worker[{self.get_name()}]",
                                        daemon=True)
        self._worker.start()
        self._outputs = threading.Thread(target=self._output_loop, name=f"voxmap_outputs[{self.get_name()}]",
                                         daemon=True)
        self._outputs.start()
        self.get_logger().info(
            f"voxmap ready: voxel {self.cfg.map.voxel_size_m} m, backend {self.mapper.backend}, "
            f"poses from {self._pose_mode}, map frame '{self.map_frame}'")

    # ------------------------------------------------------------------ set-up
    @property
    def map_frame(self) -> str:
        return self.cfg.map.frame_id

    def _count(self, key: str, n: int = 1) -> None:
        with self._count_lock:
            self.counters[key] += n

    def _log_throttled(self, key: str, msg: str, level: str = "warning") -> None:
        """At most one log line per `key` (a kind of problem) per WARN_THROTTLE_S: rclpy throttles
        per call site, so one kind of bad input would hide every other kind."""
        now = time.monotonic()
        with self._count_lock:
            last = self._last_log.get(key)
            if last is not None and now - last < WARN_THROTTLE_S:
                return
            self._last_log[key] = now
        getattr(self.get_logger(), level)(msg)

    def _declare_parameters(self, base: VoxmapConfig) -> VoxmapConfig:
        """Declare the config as parameters. With node.load_map_path naming a readable map file,
        the fields that file fixes (MAP_FILE_FIELDS) are declared with the file's values, so that
        `ros2 param get` shows the voxel size the map really has."""
        overrides = getattr(self, "_parameter_overrides", None) or {}
        started = copy.deepcopy(base)
        for name in ("node.load_map_path",) + MAP_FILE_FIELDS:
            if name in overrides:
                with contextlib.suppress(ValueError):       # declare_config reports invalid values
                    started.set(name, overrides[name].value)
        self._map_file_fixed: list[str] = []
        path = started.node.load_map_path
        if not path:
            return declare_config(self, base)
        try:
            file_cfg = Mapper.file_config(path)
        except (ValueError, OSError, KeyError):
            return declare_config(self, base)       # _make_mapper reports it and starts empty
        self._map_file_fixed = map_file_overrides(started, file_cfg)
        return declare_config(self, with_map_file_fields(base, file_cfg), fixed=MAP_FILE_FIELDS)

    def _make_mapper(self) -> Mapper:
        path = self.cfg.node.load_map_path
        if path:
            try:
                m = Mapper.load(path, config=self.cfg)      # the node's parameters, but what the file fixes
                self.get_logger().info(f"loaded map {path}: {m.octree.num_bricks} bricks")
                if self._map_file_fixed:
                    self.get_logger().warning(
                        f"the map file fixes {', '.join(self._map_file_fixed)}; those values are used")
                self.cfg = copy.deepcopy(m.config)
                return m
            except (ValueError, OSError, KeyError) as e:
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
            durability = (DurabilityPolicy.TRANSIENT_LOCAL if self.cfg.node.pose_durability == "transient_local"
                          else DurabilityPolicy.VOLATILE)
            self._subscribe(msg_type, self.cfg.node.pose_topic, self._on_pose,
                            QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE, durability=durability,
                                       history=HistoryPolicy.KEEP_LAST))

    def _subscribe(self, msg_type, topic: str, callback, qos) -> None:
        """A subscription in a mutually exclusive group of its own, whose only middleware event is
        'incompatible QoS' (warned and counted). rclpy's default event handlers (two per
        subscription and per publisher) are waitables the Python executor enters, polls and exits
        on every wait: with 26 of them they took a large share of the executor thread."""
        def on_incompatible(event, topic=topic):
            self._bad("qos", f"a publisher on '{topic}' offers QoS incompatible with this subscription "
                             f"(last policy kind {event.last_policy_kind}); no messages from it")
        self.create_subscription(msg_type, topic, callback, qos, callback_group=MutuallyExclusiveCallbackGroup(),
                                 event_callbacks=SubscriptionEventCallbacks(incompatible_qos=on_incompatible,
                                                                            use_default_callbacks=False))

    def _publisher(self, msg_type, topic: str, qos):
        """A publisher without middleware event handlers (see _subscribe): the node's map topics
        are reliable and transient-local, which every reader QoS can match."""
        return self.create_publisher(msg_type, topic, qos,
                                     event_callbacks=PublisherEventCallbacks(use_default_callbacks=False))

    def _setup_io(self) -> None:
        n = self.cfg.node
        qos = qos_profile_sensor_data if n.sensor_qos == "sensor_data" else reliable_sensor_qos(n.queue_size)
        # One mutually exclusive group per topic: topics decode in parallel, but the messages of one
        # topic are handled one at a time, in order (a reentrant group let two executor threads
        # take consecutive images and enqueue them swapped, dropping the older as non-monotonic).
        if n.depth_topic:
            self._subscribe(Image, n.depth_topic, self._on_depth, qos)
            self._subscribe(CameraInfo, n.camera_info_topic, self._on_info, qos)
            if n.color_topic:
                self._subscribe(Image, n.color_topic, self._on_color, qos)
        if n.cloud_topic:
            self._subscribe(PointCloud2, n.cloud_topic, self._on_cloud, qos)
        self.pub_mesh = self._publisher(MarkerArray, "~/mesh", MESH_QOS)
        self.pub_grid = self._publisher(OccupancyGrid, "~/occupancy", MAP_QOS)
        self.pub_voxels = self._publisher(PointCloud2, "~/occupied_voxels", MAP_QOS)
        self.pub_diag = self._publisher(DiagnosticArray, "/diagnostics", 10)
        self.pub_render_depth = self._publisher(Image, "~/render/depth", RENDER_QOS)
        self.pub_render_color = self._publisher(Image, "~/render/color", RENDER_QOS)
        self.pub_render_info = self._publisher(CameraInfo, "~/render/camera_info", RENDER_QOS)
        services = MutuallyExclusiveCallbackGroup()
        self.create_service(Trigger, "~/save_map", self._on_save, callback_group=services)
        self.create_service(Trigger, "~/clear_map", self._on_clear, callback_group=services)

    def _timer_specs(self):
        n = self.cfg.node
        return (("mesh", n.mesh_rate_hz, self._publish_mesh),
                ("occupancy", n.occupancy_rate_hz, self._publish_occupancy),
                ("voxels", n.occupied_voxels_rate_hz, self._publish_voxels),
                ("diagnostics", n.diagnostics_rate_hz, self._publish_diagnostics),
                ("prune", n.prune_rate_hz, self._prune),
                ("render", self.cfg.render.rate_hz, self._publish_render))

    def _rates(self) -> dict[str, float]:
        return {name: rate for name, rate, _cb in self._timer_specs()}

    def job_period_s(self, name: str) -> float | None:
        """Period in seconds of output job `name` ('mesh', 'occupancy', ...); None = off."""
        with self._jobs_cond:
            return self._schedule.period_s(name)

    def _apply_rates(self) -> None:
        """Follow run-time rate changes (safe from any thread, also from a parameter callback):
        the output thread picks the new periods up at once."""
        with self._jobs_cond:
            self._schedule.set_rates(self._rates(), time.monotonic())
            self._jobs_cond.notify()

    @contextlib.contextmanager
    def _locked(self, job: str):
        """The map lock for an output job; the longest hold per job since the last diagnostics
        report is reported (a long hold stalls integration and makes the queues overflow)."""
        with self._lock:
            t0 = time.perf_counter()
            try:
                yield
            finally:
                ms = (time.perf_counter() - t0) * 1000.0
                with self._count_lock:
                    self._lock_hold_ms[job] = max(self._lock_hold_ms.get(job, 0.0), ms)

    def _output_loop(self) -> None:
        """Runs the output jobs when their schedule says so, in the order of _timer_specs (each
        job is guarded: an exception is counted and logged, the loop goes on)."""
        order = [(name, cb) for name, _rate, cb in self._timer_specs()]
        while not self._stop.is_set():
            due = ()                               # stop may come between the two checks
            with self._jobs_cond:
                while not self._stop.is_set():
                    now = time.monotonic()
                    due = self._schedule.take_due(now)
                    if due:
                        break
                    wait = self._schedule.seconds_to_next(now)
                    self._jobs_cond.wait(0.5 if wait is None else min(wait, 0.5))
            for name, cb in order:
                if name in due and not self._stop.is_set():
                    cb()

    # ------------------------------------------------------------------ callbacks: convert + enqueue
    def _bad(self, what: str, err: Exception | str) -> None:
        self._count(f"bad_{what}")
        self._log_throttled(f"bad_{what}", f"{what}: {err}")

    @_guarded("camera_info")
    def _on_info(self, msg: CameraInfo) -> None:
        try:
            K = conv.camera_info_to_K(msg)
            if int(msg.width) <= 0 or int(msg.height) <= 0:
                raise ValueError(f"CameraInfo size must be > 0, got {msg.width}x{msg.height}")
            self._K = (K, int(msg.width), int(msg.height))
        except ValueError as e:
            self._bad("camera_info", e)

    @_guarded("color")
    def _on_color(self, msg: Image) -> None:
        try:
            rgb = conv.image_msg_to_numpy(msg)
            if rgb.ndim != 3 or rgb.size == 0:
                raise ValueError(f"colour image on '{self.cfg.node.color_topic}' decoded to shape {rgb.shape}, "
                                 "expected (H, W, 3), not empty")
            self._colors.add(conv.stamp_to_ns(msg.header.stamp), rgb, self._frames.oldest_stamp("rgbd"),
                             int(self.cfg.node.color_sync_tolerance_s * 1e9), self._color_cap())
        except ValueError as e:
            self._bad("color", e)

    @_guarded("depth")
    def _on_depth(self, msg: Image) -> None:
        self._count("received_rgbd")
        try:
            depth = conv.image_msg_to_numpy(msg)
            if depth.ndim != 2 or depth.dtype not in (np.uint16, np.float32):
                raise ValueError(f"depth encoding '{msg.encoding}' is not 16UC1/mono16 (mm) or 32FC1 (m)")
            if depth.size == 0:
                raise ValueError(f"depth image is empty ({msg.width}x{msg.height})")
            # Without a CameraInfo yet (its message of the same stamp may come right after the
            # image) the frame waits in the queue; the worker attaches K (see _attach_intrinsics).
            K = self._check_intrinsics(depth) if self._K is not None else None
            stamp = conv.stamp_to_ns(msg.header.stamp)
            self._enqueue(Pending("rgbd", stamp, msg.header.frame_id, {"depth": depth, "K": K}, time.monotonic()))
        except ValueError as e:
            self._bad("depth", e)

    @_guarded("cloud")
    def _on_cloud(self, msg: PointCloud2) -> None:
        self._count("received_lidar")
        try:
            max_points = self.cfg.node.max_points
            pts = conv.pointcloud2_msg_to_xyz(msg)
            if len(pts) > max_points:
                self._count("clouds_subsampled")
                self._log_throttled("clouds_subsampled", f"cloud of {len(pts)} points subsampled to "
                                                         f"node.max_points={max_points}")
                idx = self._rng.choice(len(pts), max_points, replace=False)
                idx.sort()
                pts = pts[idx]
            stamp = conv.stamp_to_ns(msg.header.stamp)
            self._enqueue(Pending("lidar", stamp, msg.header.frame_id, {"points": pts}, time.monotonic()))
        except ValueError as e:
            self._bad("cloud", e)

    def _new_pose_buffer(self) -> PoseBuffer:
        """A buffer holding node.pose_buffer_s of poses at up to POSE_MAX_HZ."""
        age = self.cfg.node.pose_buffer_s
        return PoseBuffer(max_age_s=age, max_len=max(MIN_POSE_SAMPLES, math.ceil(age * POSE_MAX_HZ) + 1))

    @_guarded("pose")
    def _on_pose(self, msg) -> None:
        try:
            stamp, frame, child, T = conv.pose_msg_to_matrix(msg)
            if frame and frame != self.map_frame:
                raise ValueError(f"pose is in frame '{frame}', expected the map frame '{self.map_frame}'")
            child = child or ""
            buf = self._poses.get(child)
            if buf is None:
                buf = self._poses.setdefault(child, self._new_pose_buffer())
            evicted = buf.evicted_by_count
            if buf.add(stamp, T):
                self._jumps.forget(f"pose:{child}")
                if buf.evicted_by_count > evicted:
                    self._log_throttled(f"pose_rate:{child}", f"poses of '{child}' come faster than "
                                        f"{POSE_MAX_HZ} Hz: the buffer holds {buf.max_len} samples, less than "
                                        f"node.pose_buffer_s={self.cfg.node.pose_buffer_s} s")
            elif self._jumps.confirms(f"pose:{child}", stamp, self._jump_ns()):
                # The second pose in a row far behind the newest: time went back (a bag loop, a
                # clock reset) or the newest had a bad stamp. Restart from this one.
                buf.clear()
                buf.add(stamp, T)
                self._count("time_jumps")
                self._log_throttled("pose_time_jump", f"poses of '{child}' went back by more than "
                                    f"node.pose_buffer_s={self.cfg.node.pose_buffer_s} s twice in a row: time "
                                    "jumped back; pose buffer restarted")
            else:
                raise ValueError(f"pose stamp {stamp} of '{child}' is more than node.pose_buffer_s="
                                 f"{self.cfg.node.pose_buffer_s} s older than the newest; ignored (a second one "
                                 "in a row restarts the buffer: time went back)")
            self._count("received_pose")
            # Pose age on arrival (node clock): a pose stream that lags makes frames wait.
            self._pose_lag_ms.append((self._stamp_now() - stamp) / 1e6)
            self._wake.set()
        except ValueError as e:
            self._bad("pose", e)

    def _enqueue(self, item: Pending) -> None:
        r = self._frames.push(item, self.cfg.node.queue_size, self._jump_ns())
        if not r.accepted:
            self._count(f"dropped_non_monotonic_{item.kind}")
            self._log_throttled(f"non_monotonic_{item.kind}", f"{item.kind} stamp {item.stamp_ns} is not newer "
                                f"than the previous one ({r.newest_ns}); dropped")
            return
        if r.restarted is not None:
            self._count("time_jumps")
            self._count(f"dropped_queue_{item.kind}", r.restarted)
            self._log_throttled(f"time_jump_{item.kind}", f"{item.kind} stamps went back by more than "
                                f"node.pose_buffer_s={self.cfg.node.pose_buffer_s} s twice in a row: time jumped "
                                f"back; {r.restarted} queued frames dropped")
        if r.overflow:
            self._count(f"dropped_queue_{item.kind}", r.overflow)
        self._wake.set()

    def _jump_ns(self) -> int:
        return int(self.cfg.node.pose_buffer_s * 1e9)

    def _on_clock_jump(self, jump) -> None:
        """The node's clock went back (with use_sim_time: a bag played again, or looped): every
        queued frame and pose belongs to the old timeline."""
        dropped = self._frames.restart()
        for buf in list(self._poses.values()):
            buf.clear()
        self._colors.clear()
        self._last_integrated_stamp_ns = 0
        self._count("time_jumps")
        for k, n in dropped.items():
            if n:
                self._count(f"dropped_queue_{k}", n)
        self.get_logger().warning(f"the clock jumped back by {-jump.delta.nanoseconds / 1e9:.3f} s: "
                                  f"queues ({sum(dropped.values())} frames) and pose buffers restarted")

    # ------------------------------------------------------------------ worker
    def _on_worker(self, job: str, fn):
        """Run fn() on the worker thread between two frames, with the map lock held (counted as
        `job`'s hold), and return its result (exceptions are re-raised here). An output job that
        reads the map this way never makes the worker wait for the lock: on a loaded 2-core
        machine a reader holding the lock from another thread ran 3-10x slower than alone (it
        competes for the GIL), and the worker stalled for that long."""
        if threading.current_thread() is self._worker or not self._worker.is_alive():
            with self._locked(job):
                return fn()
        call = _WorkerCall(job, fn)
        with self._calls_lock:
            self._worker_calls.append(call)
        self._wake.set()
        while not call.done.wait(0.5):
            if self._stop.is_set() or not self._worker.is_alive():
                raise RuntimeError(f"{job}: the worker stopped before running it")
        if call.error is not None:
            raise call.error
        return call.result

    def _run_worker_calls(self) -> None:
        with self._calls_lock:
            calls, self._worker_calls = self._worker_calls, []
        for call in calls:
            try:
                with self._locked(call.job):
                    call.result = call.fn()
            except Exception as e:                # noqa: BLE001 - handed to the caller
                call.error = e
            finally:
                call.done.set()

    def _work_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._wake.clear()                # a set() from now on ends the wait below at once
                self._run_worker_calls()
                item = self._next_ready()
                if item is None:
                    self._wake.wait(IDLE_WAIT_S)
                    continue
                try:
                    self._integrate(item)
                finally:
                    self._frames.done()
            except Exception as e:                # noqa: BLE001 - the worker must survive anything
                self._count("errors")
                self._count("error_worker")
                self._log_throttled("error_worker", f"worker: {e!r}", "error")
                self._stop.wait(IDLE_WAIT_S)

    def pending_frames(self) -> int:
        """Frames queued or being integrated (0 = the worker is idle)."""
        return self._frames.pending()

    def _next_ready(self) -> Pending | None:
        """Oldest queued item whose pose is available, taken off its queue (in-flight count + 1);
        drops items that waited too long for their pose."""
        for item in self._frames.heads():
            T, status = self._pose_for(item)
            waited = time.monotonic() - item.enqueued_s
            if T is None and (status == "too_old" or waited > self.cfg.node.pose_wait_s):
                if self._frames.drop(item):
                    self._count(f"dropped_no_pose_{item.kind}")
                    self._log_throttled(f"no_pose_{item.kind}", f"no pose for {item.kind} frame "
                                        f"'{item.frame_id}' at {item.stamp_ns} ns ({status}); dropped")
                continue
            if T is None:
                continue
            if item.kind == "rgbd" and not self._attach_intrinsics(item, waited):
                continue
            if item.kind == "rgbd" and not self._attach_color(item, waited):
                continue
            if not self._frames.take(item):     # pushed out of the queue meanwhile (counted there)
                continue
            item.data["T"] = T
            return item
        return None

    def _check_intrinsics(self, depth: np.ndarray) -> np.ndarray:
        K, w, h = self._K
        if (w, h) != (depth.shape[1], depth.shape[0]):
            raise ValueError(f"depth image is {depth.shape[1]}x{depth.shape[0]} but CameraInfo says {w}x{h}")
        return K

    def _attach_intrinsics(self, item: Pending, waited_s: float) -> bool:
        """K for a depth image that arrived before any CameraInfo. False = not ready: it keeps
        waiting, or, after node.pose_wait_s or on a size mismatch, it is dropped (counted)."""
        if item.data["K"] is not None:
            return True
        try:
            if self._K is not None:
                item.data["K"] = self._check_intrinsics(item.data["depth"])
                return True
            if waited_s <= self.cfg.node.pose_wait_s:
                return False
            raise ValueError(f"no CameraInfo on '{self.cfg.node.camera_info_topic}' within "
                             f"node.pose_wait_s={self.cfg.node.pose_wait_s} s")
        except ValueError as e:
            if self._frames.drop(item):
                self._bad("depth", e)
            return False

    def _color_cap(self) -> int:
        """Most colour images held: a full depth queue's partners (colour at up to twice the depth
        rate) plus node.pose_wait_s of colour at 60 Hz, for a frame that waits for its pose."""
        n = self.cfg.node
        return 2 * n.queue_size + self._colors.keep_recent + int(COLOR_MAX_HZ * n.pose_wait_s)

    def _attach_color(self, item: Pending, waited_s: float) -> bool:
        """Pair the depth image with the nearest colour image; False = wait for it a little longer."""
        if not self.cfg.node.color_topic or "rgb" in item.data:
            return True
        rgb, newest = self._colors.nearest(item.stamp_ns, int(self.cfg.node.color_sync_tolerance_s * 1e9))
        if rgb is not None:
            if rgb.shape[:2] != item.data["depth"].shape:
                self._bad("color", f"colour image {rgb.shape[1]}x{rgb.shape[0]} does not match depth "
                                   f"{item.data['depth'].shape[1]}x{item.data['depth'].shape[0]}; fused without colour")
                rgb = None
                self._count("rgbd_without_color")
            item.data["rgb"] = rgb
            return True
        if newest < item.stamp_ns and waited_s < COLOR_WAIT_S:
            return False
        item.data["rgb"] = None
        self._count("rgbd_without_color")
        return True

    def _pose_for(self, item: Pending) -> tuple[np.ndarray | None, str]:
        if self._pose_mode == "tf":
            return self._tf_pose(item)
        buffers = dict(self._poses)
        # '' holds the body pose of a PoseStamped stream: an unnamed sensor frame is not that body.
        if item.frame_id and item.frame_id in buffers:      # a transform straight to the sensor frame
            buf, T_body_sensor = buffers[item.frame_id], np.eye(4)
        else:                                        # the body pose and the static extrinsic
            body = self.cfg.node.body_frame
            if body:
                buf = buffers.get(body) or buffers.get("")      # '': a PoseStamped stream is the body
            else:
                buf = buffers.get("") or (next(iter(buffers.values())) if len(buffers) == 1 else None)
                if buf is None and len(buffers) > 1:
                    self._log_throttled("ambiguous_body", f"{item.kind} frame '{item.frame_id}' has no pose stream "
                                        f"of its own and the pose topic carries several child frames "
                                        f"{sorted(buffers)}: set node.body_frame to the body's")
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
        t_wait = time.perf_counter()
        try:
            with self._lock:
                t0 = time.perf_counter()
                self._lock_wait_ms.append((t0 - t_wait) * 1000.0)
                visited = self.mapper.integrate(frame)
                if item.kind == "rgbd":
                    h, w = d["depth"].shape[:2]
                    self._camera = CameraView(np.asarray(d["K"], np.float64), np.asarray(d["T"], np.float64),
                                              w, h, item.frame_id, item.stamp_ns)
        except ValueError as e:
            self._bad(item.kind, e)
            return
        except Exception as e:                    # never let one frame kill the worker
            self._count("errors")
            self._count(f"error_{item.kind}")
            self._log_throttled(f"error_{item.kind}", f"integration of {item.kind} frame failed: {e!r}", "error")
            return
        self._ms_recent.append((time.perf_counter() - t0) * 1000.0)
        # Stamp -> map updated, on the node's clock (wall time, or bag time with use_sim_time).
        self._latency_ms.append((self._stamp_now() - item.stamp_ns) / 1e6)
        if item.kind == "lidar":
            self._last_cloud_points = len(d["points"])
        if visited == 0:              # NaN everywhere, nothing within range: nothing was fused
            self._count(f"empty_{item.kind}")
            self._log_throttled(f"empty_{item.kind}", f"{item.kind} frame at {item.stamp_ns} ns has no valid "
                                f"reading within range: nothing integrated")
        else:
            self._count(f"integrated_{item.kind}")
        self._last_integrated_stamp_ns = max(self._last_integrated_stamp_ns, item.stamp_ns)

    # ------------------------------------------------------------------ publishing
    def _stamp_now(self) -> int:
        return self.get_clock().now().nanoseconds

    @_guarded("mesh")
    def _publish_mesh(self) -> None:
        with self._mesh_lock:
            # Only the gathering of the changed blocks reads the map (on the worker, between two
            # frames); marching cubes runs here on the copy while the worker goes on integrating.
            # Stamped with the newest frame the mesh contains: stamp -> mesh latency is then
            # readable by any subscriber, and the map frame needs no TF at a later time.
            job, stamp = self._on_worker("mesh", lambda: (self.mapper.prepare_mesh_update(),
                                                          self._last_integrated_stamp_ns or self._stamp_now()))
            update = self.mapper.finish_mesh_update(job)
            store = self.mapper.mesh_store()
            subs = self.pub_mesh.get_subscription_count()
            # Serialized output: the CDR bytes come straight from numpy (no Python object per
            # triangle corner); publish(bytes) sends them as they are.
            # The cycle's changes (deletions included) go out first; a late subscriber then gets
            # every chunk once, which the others receive as a harmless repeat.
            messages = [self.chunker.update_cdr(store, update.remeshed_keys, update.removed_keys,
                                                self.map_frame, stamp)]
            if subs > self._mesh_subs_seen:
                messages.append(self.chunker.full_markers_cdr(self.map_frame, stamp))
            self._mesh_subs_seen = subs
            self._count("mesh_cycles")
            for data in messages:
                if data is not None:
                    self._publish_markers(data)

    def _publish_markers(self, data: bytes) -> None:
        """Publish one serialized MarkerArray on the mesh topic."""
        if self._mesh_raw:
            try:
                self.pub_mesh.publish(data)
            except TypeError:                   # an rclpy whose publish() takes no serialized bytes
                self._mesh_raw = False
        if not self._mesh_raw:
            from rclpy.serialization import deserialize_message
            self.pub_mesh.publish(deserialize_message(data, MarkerArray))
        self._count("mesh_messages")

    @_guarded("occupancy")
    def _publish_occupancy(self) -> None:
        if self.pub_grid.get_subscription_count() == 0:      # nobody listens: skip the projection
            return
        with self._locked("occupancy"):
            grid = self.mapper.occupancy_grid()
            stamp = self._stamp_now()              # the moment of the map the grid shows
        self.pub_grid.publish(conv.grid_to_occupancy_grid(grid, stamp, self.map_frame))

    @_guarded("voxels")
    def _publish_voxels(self) -> None:
        if self.pub_voxels.get_subscription_count() == 0:
            return
        with self._locked("voxels"):
            pts, cols = self.mapper.occupied_points(self.cfg.node.occupied_voxels_level)
            stamp = self._stamp_now()
        self.pub_voxels.publish(conv.xyz_rgb_to_pointcloud2(pts, cols, stamp, self.map_frame))

    def _render_target(self, rc) -> tuple[View, str, int] | None:
        """(view, frame_id, stamp) to render for render config `rc`; None = nothing yet (no RGB-D
        frame integrated in 'latest_camera' mode). Call with the map lock held."""
        if rc.viewpoint == "fixed":
            return fixed_view(rc), rc.fixed_frame_id, self._last_integrated_stamp_ns or self._stamp_now()
        cam = self._camera
        if cam is None:
            return None
        return (scaled_view(cam.K, cam.width, cam.height, cam.T_W_C, rc.width, rc.height), cam.frame_id,
                cam.stamp_ns)

    @_guarded("render")
    def _publish_render(self) -> None:
        pubs = (self.pub_render_depth, self.pub_render_color, self.pub_render_info)
        if all(p.get_subscription_count() == 0 for p in pubs):     # nobody listens: no work
            return
        t0 = time.perf_counter()
        with self._locked("render"):
            rc = self.cfg.render
            target = self._render_target(rc)
            if target is None:
                return                               # no camera pose yet: nothing to draw from
            view, frame_id, stamp = target
            snap = map_snapshot(self.mapper, view, rc.near_m, rc.far_m)
        t_lock = time.perf_counter()
        rv = render_snapshot(snap, view, rc)
        self.pub_render_depth.publish(conv.numpy_to_image_msg(rv.depth_m, "32FC1", stamp, frame_id))
        self.pub_render_color.publish(conv.numpy_to_image_msg(rv.rgb, "rgb8", stamp, frame_id))
        self.pub_render_info.publish(conv.K_to_camera_info(view.K, view.width, view.height, stamp, frame_id))
        self._render_lock_ms.append((t_lock - t0) * 1000.0)
        self._render_ms.append((time.perf_counter() - t0) * 1000.0)
        self._count("renders")

    @_guarded("prune")
    def _prune(self) -> None:
        with self._locked("prune"):
            self.mapper.prune()

    def diagnostics_values(self) -> dict:
        with self._locked("diagnostics"):
            s = self.mapper.summary(nodes=False)     # node count would refresh the summaries first
        depths = self._frames.depths()
        with self._count_lock:
            values = dict(self.counters)
            holds, self._lock_hold_ms = self._lock_hold_ms, {}
        worst = max(holds.items(), key=lambda kv: kv[1]) if holds else ("", 0.0)
        ms = np.asarray(self._ms_recent) if self._ms_recent else np.zeros(0)
        lat = np.asarray(self._latency_ms) if self._latency_ms else np.zeros(0)
        pose_lag = np.asarray(self._pose_lag_ms) if self._pose_lag_ms else np.zeros(0)
        lock_wait = np.asarray(self._lock_wait_ms) if self._lock_wait_ms else np.zeros(0)
        rms = np.asarray(self._render_ms) if self._render_ms else np.zeros(0)
        rlock = np.asarray(self._render_lock_ms) if self._render_lock_ms else np.zeros(0)
        values.update({"dropped": sum(v for k, v in values.items() if k.startswith("dropped_")),
                       "queue_rgbd": depths["rgbd"], "queue_lidar": depths["lidar"],
                       "queue_size": self.cfg.node.queue_size,
                       "ms_per_frame_median": float(np.median(ms)) if ms.size else 0.0,
                       "ms_per_frame_p95": float(np.percentile(ms, 95)) if ms.size else 0.0,
                       "latency_ms_median": float(np.median(lat)) if lat.size else 0.0,
                       "latency_ms_p95": float(np.percentile(lat, 95)) if lat.size else 0.0,
                       "lock_hold_ms_max": worst[1], "lock_hold_job": worst[0],
                       "lock_wait_ms_p95": float(np.percentile(lock_wait, 95)) if lock_wait.size else 0.0,
                       "pose_lag_ms_median": float(np.median(pose_lag)) if pose_lag.size else 0.0,
                       "last_cloud_points": self._last_cloud_points,
                       "render_ms": float(np.median(rms)) if rms.size else 0.0,
                       "render_lock_ms": float(np.median(rlock)) if rlock.size else 0.0,
                       "voxels": s["voxels"], "bricks": s["bricks"], "map_bytes": s["map_bytes"],
                       "device": s["device"], "backend": s["backend"], "pose_source": self._pose_mode})
        return values

    @_guarded("diagnostics")
    def _publish_diagnostics(self) -> None:
        values = self.diagnostics_values()
        dropped = values["dropped"]
        bad = sum(v for k, v in values.items() if k.startswith("bad_")) + values.get("errors", 0)
        # WARN while frames are being dropped or rejected (since the previous report), OK again after.
        recent_dropped = dropped - self._dropped_at_last_diag
        recent_bad = bad - self._bad_at_last_diag
        self._dropped_at_last_diag, self._bad_at_last_diag = dropped, bad
        level = DiagnosticStatus.OK if recent_dropped == 0 and recent_bad == 0 else DiagnosticStatus.WARN
        text = "mapping"
        if level != DiagnosticStatus.OK:
            text = (f"{recent_dropped} frames dropped, {recent_bad} bad messages since the last report "
                    f"({dropped} dropped, {bad} bad in all)")
        self.pub_diag.publish(conv.make_diagnostics(f"{self.get_name()}: map", "voxmap", level, text, values,
                                                    self._stamp_now()))

    # ------------------------------------------------------------------ services and parameters
    def _on_save(self, request, response):
        try:
            out = Path(self.cfg.node.output_dir).expanduser()
            with self._lock:                       # copies only: mapping goes on while the files are written
                cap = capture_outputs(self.mapper)
            paths = write_captured(cap, out)
            response.success = True
            response.message = "; ".join(f"{k}={v}" for k, v in paths.items())
        except Exception as e:                    # disk full, permissions...: answer, don't die
            response.success = False
            response.message = f"save failed: {e}"
        return response

    def _on_clear(self, request, response):
        try:
            with self._mesh_lock, self._lock:      # not in the middle of a mesh update
                self.mapper.clear()
            # The mesh timer sends DELETE markers for the vanished chunks on its next tick (the
            # cleared bricks are recorded by the mapper); publishing here would race with it.
            response.success = True
            response.message = "map cleared"
        except Exception as e:
            response.success = False
            response.message = f"clear failed: {e}"
        return response

    def _on_params(self, params) -> SetParametersResult:
        try:
            new, result = validate_changes(self.cfg, params)
        except Exception as e:                    # noqa: BLE001 - answer the request, never raise
            return SetParametersResult(successful=False, reason=f"invalid parameters: {e}")
        if new is None:
            return result
        if new.render.rate_hz > 0 and any(p.name in ("render.backend", "render.rate_hz") for p in params):
            try:
                render_check_backend(new.render.backend, self.mapper.device)
            except ValueError as e:
                return SetParametersResult(successful=False, reason=f"render.backend: {e}")
        with self._lock:
            try:
                self.mapper.set_config(new)
            except Exception as e:                # noqa: BLE001 - answer the request, never raise
                return SetParametersResult(successful=False, reason=f"invalid parameters: {e}")
            self.cfg = new
        if any(p.name.endswith("rate_hz") for p in params):
            self._apply_rates()
        return result

    def destroy_node(self) -> None:
        self._stop.set()
        self._wake.set()
        with self._jobs_cond:
            self._jobs_cond.notify_all()
        for th in (self._worker, self._outputs):
            if th.is_alive() and th is not threading.current_thread():
                th.join(timeout=10.0)
        super().destroy_node()


def process_command(node_name: str, params: dict, params_file: Path | None = None) -> list[str]:
    """argv that runs the node as its own process (what `voxmap_node` runs) with node name, an
    optional ROS params file and parameters {name: value} (these win); values are YAML, '' becomes
    an empty string."""
    cmd = [sys.executable, "-c", "from voxmap_ros.ros.node import main; main()",
           "--ros-args", "-r", f"__node:={node_name}"]
    if params_file is not None:
        cmd += ["--params-file", str(params_file)]
    for k, v in params.items():
        cmd += ["-p", f"{k}:={v if v != '' else repr('')}"]
    return cmd


def make_executor(kind: str):
    """The executor that spins the node in its own process ('single' or 'multi', node.executor).
    (rclpy's experimental EventsExecutor was tried: in rclpy 9.1 it spun a core at 100 % without
    running the node's callbacks.)"""
    if kind == "multi":
        return rclpy.executors.MultiThreadedExecutor(num_threads=3)
    return rclpy.executors.SingleThreadedExecutor()


GIL_SWITCH_INTERVAL_S = 0.0005


def _configure_node_process(n: int) -> None:
    """Process-wide settings of the node's own process (an in-process node leaves its host's alone):
    the thread count of torch and the compiled kernels (they follow torch), and a short GIL switch
    interval, because the worker releases the GIL for every tensor op and with the default 5 ms
    it could wait that long to get it back from a thread running Python (the mesh serialiser)."""
    torch.set_num_threads(int(n) if n > 0 else max(1, os.cpu_count() or 1))
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)


def main(args=None) -> None:
    from rclpy.exceptions import ParameterException
    rclpy.init(args=args)
    node = None
    code = 0
    try:
        node = VoxmapNode()
        _configure_node_process(node.cfg.node.compute_threads)
        node.get_logger().info(f"compute threads: {torch.get_num_threads()}")
        executor = make_executor(node.cfg.node.executor)
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, rclpy.executors.ExternalShutdownException):
        pass
    except (ValueError, ParameterException) as e:     # bad start-up parameters: say which, exit non-zero
        print(f"voxmap: invalid configuration: {e}", file=sys.stderr)
        code = 2
    finally:
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    if code:
        raise SystemExit(code)
