"""rosbag2 datasets (sqlite3 or mcap, plain or zstd-compressed) via `rosbags`, no ROS install.

    ds = BagDataset("run.bag")            # a rosbag2 directory, or a single .db3 / .mcap file
    len(ds); frame = ds[i]; ds.summary()

Topics are found by message type; keyword arguments override the choice:
  depth   sensor_msgs/msg/Image with encoding 16UC1 / mono16 (units of 1/depth_scale m) or 32FC1 (m)
  color   sensor_msgs/msg/Image with encoding rgb8 / bgr8 / rgba8 / bgra8 / mono8 (optional)
  info    sensor_msgs/msg/CameraInfo (K from `k`; the latest at or before the depth stamp
          plus pair_tolerance_s, or the first one for depth images before any)
  cloud   sensor_msgs/msg/PointCloud2 (x, y, z; float32 or float64)
  poses   tf2_msgs/msg/TFMessage on /tf (time-stamped) and /tf_static (static); also
          geometry_msgs/msg/TransformStamped and nav_msgs/msg/Odometry topics (edge
          header.frame_id -> child_frame_id) for edges /tf does not carry, and one
          geometry_msgs/msg/PoseStamped topic (not a "goal") as the pose of a sensor frame that
          has no parent otherwise, or of the root of its chain when that chain is all static.
The map frame is the root of the TF tree that the sensor frames hang from (override with
`map_frame`); a sensor's frame is the header.frame_id of its messages (override with
`sensor_frames`). Each frame gets T_map_sensor at its header stamp by composing every edge of
the chain, dynamic edges interpolated between their bracketing samples (slerp for rotation,
linear for translation); a stamp more than `tf_tolerance_s` outside an edge's samples has no
pose, and its frame is skipped and counted. A header stamp of 0 falls back to the bag time.

Indexing reads each message once (decompressing it) but keeps only stamps, positions and small
metadata; `ds[i]` reads and decodes one frame, so a large bag is never held in memory.
"""
from __future__ import annotations

import logging
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voxmap_ros.datasets.msg_decode import (image_to_numpy, is_color_encoding, is_depth_encoding,
                                            pointcloud2_to_xyz)
from voxmap_ros.types import Frame

log = logging.getLogger(__name__)

BAG_FILE_SUFFIXES = (".db3", ".mcap")
IMAGE = "sensor_msgs/msg/Image"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
POINTCLOUD2 = "sensor_msgs/msg/PointCloud2"
TF_MESSAGE = "tf2_msgs/msg/TFMessage"
TRANSFORM_STAMPED = "geometry_msgs/msg/TransformStamped"
POSE_STAMPED = "geometry_msgs/msg/PoseStamped"
ODOMETRY = "nav_msgs/msg/Odometry"
_MAP_NAME_PREFERENCE = ("map", "world", "odom")
_SLERP_LINEAR_DOT = 0.9995       # |q0 . q1| above this: normalized lerp (angle < 1.8 degrees)
_MIN_QUAT_NORM = 1e-6


def is_bag(path) -> bool:
    """True for a rosbag2 directory (holding metadata.yaml) or a single .db3 / .mcap file."""
    p = Path(path)
    if p.is_dir():
        return (p / "metadata.yaml").is_file()
    return p.is_file() and p.suffix.lower() in BAG_FILE_SUFFIXES


def _bag_root(path: Path) -> Path:
    """The path to hand to rosbags: a storage file inside a bag directory opens the directory, so
    that the directory's compression settings (per-message zstd) apply."""
    if path.is_file() and (path.parent / "metadata.yaml").is_file():
        return path.parent
    return path


# ---------------------------------------------------------------------------------------------
# Rotations

def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """(4,) quaternion (x, y, z, w), any norm > 0 -> (3, 3) float64 rotation."""
    x, y, z, w = np.asarray(q, np.float64) / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def slerp(q0: np.ndarray, q1: np.ndarray, u: float) -> np.ndarray:
    """Spherical linear interpolation of unit quaternions (x, y, z, w) at u in [0, 1], along the
    shorter arc. Returns a (4,) unit quaternion."""
    q0, q1 = np.asarray(q0, np.float64), np.asarray(q1, np.float64)
    d = float(q0 @ q1)
    if d < 0:
        q1, d = -q1, -d
    if d > _SLERP_LINEAR_DOT:
        q = q0 + u * (q1 - q0)
    else:
        th = np.arccos(min(d, 1.0))
        q = (np.sin((1 - u) * th) * q0 + np.sin(u * th) * q1) / np.sin(th)
    return q / np.linalg.norm(q)


def _rigid(t: np.ndarray, q: np.ndarray) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = quat_to_matrix(q)
    T[:3, 3] = t
    return T


def _inv(T: np.ndarray) -> np.ndarray:
    Ti = np.eye(4)
    Ti[:3, :3] = T[:3, :3].T
    Ti[:3, 3] = -T[:3, :3].T @ T[:3, 3]
    return Ti


# ---------------------------------------------------------------------------------------------
# TF tree

class _Edge:
    """Transform T_parent_child over time: `times` (n,) int64 ns sorted, `t` (n, 3), `q` (n, 4)."""

    def __init__(self, parent: str, child: str, static: bool, source: str):
        self.parent, self.child, self.static, self.source = parent, child, static, source
        self._samples: list[tuple[int, tuple, tuple]] = []
        self.times = np.zeros(0, np.int64)

    def add(self, stamp_ns: int, t, q) -> None:
        self._samples.append((int(stamp_ns), t, q))

    def finalize(self) -> None:
        by_time = {}
        for s, t, q in self._samples:          # equal stamps: the later message wins
            by_time[s] = (t, q)
        times = sorted(by_time)
        self.times = np.array(times, np.int64)
        self.t = np.array([by_time[s][0] for s in times], np.float64).reshape(-1, 3)
        q = np.array([by_time[s][1] for s in times], np.float64).reshape(-1, 4)
        self.q = q / np.linalg.norm(q, axis=1, keepdims=True)
        self._samples = []

    def at(self, stamp_ns: int, tol_ns: int) -> np.ndarray | None:
        """(4, 4) T_parent_child at stamp_ns, or None when the stamp is more than tol_ns outside
        the samples. Static edges hold at any time (their last sample)."""
        n = len(self.times)
        if n == 0:
            return None
        if self.static:
            return _rigid(self.t[-1], self.q[-1])
        i = int(np.searchsorted(self.times, stamp_ns, side="right"))   # times[i-1] <= stamp < times[i]
        if i == 0:
            return _rigid(self.t[0], self.q[0]) if self.times[0] - stamp_ns <= tol_ns else None
        if i == n:
            return _rigid(self.t[-1], self.q[-1]) if stamp_ns - self.times[-1] <= tol_ns else None
        a, b = int(self.times[i - 1]), int(self.times[i])
        if stamp_ns == a:
            return _rigid(self.t[i - 1], self.q[i - 1])
        u = (stamp_ns - a) / (b - a)
        return _rigid((1 - u) * self.t[i - 1] + u * self.t[i], slerp(self.q[i - 1], self.q[i], u))


class TfTree:
    """A tree of frames (each child has one parent) built from transform samples."""

    def __init__(self):
        self.edges: dict[str, _Edge] = {}      # child -> edge to its parent
        self.conflicts: Counter = Counter()    # "child: parent_a vs parent_b" -> samples ignored
        self.invalid_samples = 0

    def add(self, parent: str, child: str, stamp_ns: int, t, q, static: bool, source: str,
            only_new_edges: bool = False) -> None:
        parent, child = _frame(parent), _frame(child)
        if not parent or not child or parent == child:
            self.invalid_samples += 1
            return
        qn = float(np.linalg.norm(q))
        if not np.isfinite(qn) or qn < _MIN_QUAT_NORM or not np.all(np.isfinite(t)):
            self.invalid_samples += 1
            return
        e = self.edges.get(child)
        if e is None:
            e = self.edges[child] = _Edge(parent, child, static, source)
        elif e.parent != parent:
            self.conflicts[f"{child}: parent {e.parent} vs {parent} ({source})"] += 1
            return
        elif only_new_edges and e.source != source:
            return
        e.static = e.static or static
        e.add(stamp_ns, tuple(t), tuple(q))

    def finalize(self) -> None:
        for e in self.edges.values():
            e.finalize()

    @property
    def frames(self) -> set[str]:
        return set(self.edges) | {e.parent for e in self.edges.values()}

    def chain(self, frame: str) -> list[_Edge]:
        """Edges from `frame` up to its root (empty for a root or an unknown frame)."""
        out, seen = [], {frame}
        while frame in self.edges:
            e = self.edges[frame]
            if e.parent in seen:
                raise ValueError(f"TF has a cycle through {e.parent}; expected a tree")
            seen.add(e.parent)
            out.append(e)
            frame = e.parent
        return out

    def root(self, frame: str) -> str:
        ch = self.chain(frame)
        return ch[-1].parent if ch else frame

    def path(self, target: str, source: str) -> tuple[list[_Edge], list[_Edge]] | None:
        """The edges from `source` and from `target` up to their lowest common ancestor (as tf2
        walks: links above it, map -> odom for odom -> camera, play no part); None when the frames
        are not connected."""
        up_source = self.chain(source)
        up_target = self.chain(target)
        target_frames = [target] + [e.parent for e in up_target]
        for i, frame in enumerate([source] + [e.parent for e in up_source]):
            if frame in target_frames:
                return up_source[:i], up_target[:target_frames.index(frame)]
        return None

    def lookup(self, target: str, source: str, stamp_ns: int, tol_ns: int) -> np.ndarray | None:
        """T_target_source (4, 4) at stamp_ns, or None when the frames are not connected or a
        stamp lies outside the samples of an edge on the path (see `path`)."""
        p = self.path(target, source)
        if p is None:
            return None
        T_c = []                                  # T_common_source, T_common_target
        for edges in p:
            T = np.eye(4)
            for e in edges:
                E = e.at(stamp_ns, tol_ns)
                if E is None:
                    return None
                T = E @ T
            T_c.append(T)
        return _inv(T_c[1]) @ T_c[0]


def _frame(name: str) -> str:
    return str(name).strip().lstrip("/")


def _stamp_ns(header, bag_ns: int) -> tuple[int, bool]:
    s = int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)
    return (s, False) if s != 0 else (int(bag_ns), True)


# ---------------------------------------------------------------------------------------------
# Index records

@dataclass
class _Ref:
    """Where one message is: its connection id, bag timestamp and rank among that connection's
    messages with the same bag timestamp."""
    conn_id: int
    bag_ns: int
    occ: int


@dataclass
class _ImageRec:
    ref: _Ref
    stamp_ns: int
    frame_id: str
    encoding: str
    height: int
    width: int


@dataclass
class _CloudRec:
    ref: _Ref
    stamp_ns: int
    frame_id: str
    n_points: int


@dataclass
class _Entry:
    """One output frame: kind "rgbd" (depth, color, K) or "lidar" (cloud)."""
    kind: str
    stamp_ns: int
    frame_id: str
    T: np.ndarray
    depth: _ImageRec | None = None
    color: _ImageRec | None = None
    K: np.ndarray | None = None
    cloud: _CloudRec | None = None


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class BagDataset:
    """RGB-D frames and LiDAR scans of a rosbag2, in time order, each with its pose.

    `frame = ds[i]`: RGB-D -> Frame(depth (H, W) uint16 with depth_scale (16UC1 / mono16) or
    float32 metres (32FC1), rgb (H, W, 3) uint8 RGB or None, K (3, 3) float64, T_W_S (4, 4)
    float64 sensor -> map frame, stamp_ns (header stamp), frame_id); LiDAR -> Frame(points
    (N, 3) float32 finite, T_W_S, stamp_ns, frame_id). Only frames that have a pose are counted in
    `len(ds)`; `ds.summary()` says what was found and what was skipped, and why.

    depth_topic / color_topic / info_topic / cloud_topic: pick topics by name (default: found by
    message type and encoding). map_frame: the world frame (default: the TF root of the sensor
    frames). sensor_frames: {topic or role ("depth", "color", "cloud"): frame} to replace the
    header.frame_id. depth_scale: 16UC1 units per metre (1000 = millimetres, the ROS convention).
    pair_tolerance_s: a colour image within this of the depth stamp is paired with it.
    tf_tolerance_s: how far a stamp may lie outside the TF samples of an edge and still use the
    nearest sample.
    """

    _reader = None
    _conns: dict = {}

    def __init__(self, path, *, depth_topic: str | None = None, color_topic: str | None = None,
                 info_topic: str | None = None, cloud_topic: str | None = None, map_frame: str | None = None,
                 sensor_frames: dict[str, str] | None = None, depth_scale: float = 1000.0,
                 pair_tolerance_s: float = 0.02, tf_tolerance_s: float = 0.05):
        from rosbags.rosbag2 import Reader
        from rosbags.typesys import Stores, get_typestore

        self.path = Path(path)
        if not is_bag(self.path):
            raise ValueError(f"{self.path} is not a rosbag2: expected a directory with metadata.yaml or a "
                             f"{' / '.join(BAG_FILE_SUFFIXES)} file")
        if depth_scale <= 0:
            raise ValueError(f"depth_scale must be > 0 (16UC1 units per metre), got {depth_scale}")
        if pair_tolerance_s < 0 or tf_tolerance_s < 0:
            raise ValueError(f"tolerances must be >= 0 s, got pair {pair_tolerance_s}, tf {tf_tolerance_s}")
        self.depth_scale = float(depth_scale)
        self.pair_tol_ns = int(round(pair_tolerance_s * 1e9))
        self.tf_tol_ns = int(round(tf_tolerance_s * 1e9))
        self._sensor_frames = {k: _frame(v) for k, v in (sensor_frames or {}).items()}
        self._typestore = get_typestore(Stores.ROS2_HUMBLE)
        self._reader_cls = Reader
        self._reader = None
        try:
            self._index(depth_topic, color_topic, info_topic, cloud_topic, map_frame)
        except BaseException:
            self.close()
            raise

    # -- reading -----------------------------------------------------------------------------
    def _open(self):
        if self._reader is None:
            from rosbags.rosbag2.errors import ReaderError
            r = self._reader_cls(_bag_root(self.path))
            try:
                r.open()
            except (ReaderError, KeyError, OSError) as e:
                raise ValueError(f"{self.path}: cannot open as rosbag2 ({' '.join(str(e).split())})") from None
            self._reader = r
            self._conns = {c.id: c for c in r.connections}
        return self._reader

    def close(self) -> None:
        """Close the bag file (reopened on the next `ds[i]`)."""
        r, self._reader = self._reader, None
        if r is not None:
            try:
                r.close()
            except Exception:  # noqa: BLE001 - closing must not mask the caller's error
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        self.close()

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_reader"] = None               # reopened lazily in the other process
        state["_conns"] = {}
        state.pop("_typestore", None)         # holds generated code; rebuilt on unpickling
        state.pop("_reader_cls", None)
        return state

    def __setstate__(self, state):
        from rosbags.rosbag2 import Reader
        from rosbags.typesys import Stores, get_typestore
        self.__dict__.update(state)
        self._typestore = get_typestore(Stores.ROS2_HUMBLE)
        self._reader_cls = Reader

    def _deserialize(self, raw, msgtype: str):
        return self._typestore.deserialize_cdr(raw, msgtype)

    def _messages(self, conns, **window):
        """reader.messages(conns, **window), with storage-level corruption (sqlite, mcap: errors of
        any type from deep inside the readers) turned into one ValueError naming the bag."""
        it = iter(self._open().messages(conns, **window))
        try:
            while True:
                try:
                    item = next(it)
                except StopIteration:
                    return
                except Exception as e:  # noqa: BLE001 - apsw.CorruptError, OverflowError, struct.error, ...
                    raise ValueError(f"{self.path}: cannot read the bag's messages, the file is damaged "
                                     f"({type(e).__name__}: {' '.join(str(e).split())})") from None
                yield item
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    def _read(self, ref: _Ref):
        self._open()
        conn = self._conns[ref.conn_id]
        gen = self._messages([conn], start=ref.bag_ns, stop=ref.bag_ns + 1)
        try:
            for k, (conn, _, raw) in enumerate(gen):
                if k == ref.occ:
                    return self._deserialize(raw, conn.msgtype)
        finally:
            gen.close()
        raise ValueError(f"{self.path}: message on {conn.topic} at bag time {ref.bag_ns} ns is gone "
                         "(was the bag modified after it was indexed?)")

    # -- indexing ----------------------------------------------------------------------------
    def _sensor_frame(self, topic: str, role: str, header_frame: str) -> str:
        return self._sensor_frames.get(topic) or self._sensor_frames.get(role) or _frame(header_frame)

    def _index(self, depth_topic, color_topic, info_topic, cloud_topic, map_frame) -> None:
        reader = self._open()
        conns = reader.connections
        by_type = defaultdict(set)
        for c in conns:
            by_type[c.msgtype].add(c.topic)
        all_topics = {c.topic: c.msgtype for c in conns}
        for name, topic, want in (("depth_topic", depth_topic, IMAGE), ("color_topic", color_topic, IMAGE),
                                  ("info_topic", info_topic, CAMERA_INFO), ("cloud_topic", cloud_topic, POINTCLOUD2)):
            if topic is not None and all_topics.get(topic) != want:
                raise ValueError(f"{name}={topic!r}: the bag has no {want} topic of that name; its topics: "
                                 f"{ {t: m for t, m in sorted(all_topics.items())} }")
        if cloud_topic is None:
            clouds = sorted(by_type[POINTCLOUD2])
        else:
            clouds = [cloud_topic]
        wanted = {IMAGE, CAMERA_INFO, TF_MESSAGE, TRANSFORM_STAMPED, POSE_STAMPED, ODOMETRY}
        read_conns = [c for c in conns if c.msgtype in wanted or c.topic in clouds]

        images: dict[str, list[_ImageRec]] = defaultdict(list)
        infos: dict[str, list[tuple[int, np.ndarray, int, int]]] = defaultdict(list)
        cloud_recs: dict[str, list[_CloudRec]] = defaultdict(list)
        topic_sources: list[tuple] = []    # (parent, child, stamp, t, q, source) from pose topics
        pose_stamped: dict[str, list[tuple]] = defaultdict(list)
        tree = TfTree()
        occ: Counter = Counter()
        counts: Counter = Counter()
        zero_stamps = 0
        undecodable: Counter = Counter()
        ts = self._typestore

        for conn, bag_ns, raw in self._messages(read_conns):
            key = (conn.id, bag_ns)
            ref = _Ref(conn.id, int(bag_ns), occ[key])
            occ[key] += 1
            counts[conn.topic] += 1
            try:
                msg = ts.deserialize_cdr(raw, conn.msgtype)
            except Exception as e:  # noqa: BLE001 - a corrupt message is skipped and counted
                undecodable[f"{conn.topic}: {type(e).__name__}"] += 1
                continue
            mt = conn.msgtype
            if mt == TF_MESSAGE:
                static = conn.topic.rstrip("/").endswith("tf_static")
                for tr in msg.transforms:
                    s, z = _stamp_ns(tr.header, bag_ns)
                    tree.add(tr.header.frame_id, tr.child_frame_id, s, _vec(tr.transform.translation),
                             _quat(tr.transform.rotation), static, "tf_static" if static else "tf")
                continue
            if mt in (TRANSFORM_STAMPED, ODOMETRY, POSE_STAMPED):
                s, z = _stamp_ns(msg.header, bag_ns)
                if mt == TRANSFORM_STAMPED:
                    topic_sources.append((msg.header.frame_id, msg.child_frame_id, s,
                                          _vec(msg.transform.translation), _quat(msg.transform.rotation), conn.topic))
                elif mt == ODOMETRY:
                    p = msg.pose.pose
                    topic_sources.append((msg.header.frame_id, msg.child_frame_id, s, _vec(p.position),
                                          _quat(p.orientation), conn.topic))
                else:
                    pose_stamped[conn.topic].append((msg.header.frame_id, s, _vec(msg.pose.position),
                                                     _quat(msg.pose.orientation)))
                continue
            s, z = _stamp_ns(msg.header, bag_ns)
            zero_stamps += z
            if mt == IMAGE:
                images[conn.topic].append(_ImageRec(ref, s, msg.header.frame_id, str(msg.encoding),
                                                    int(msg.height), int(msg.width)))
            elif mt == CAMERA_INFO:
                infos[conn.topic].append((s, np.array(msg.k, np.float64).reshape(3, 3), int(msg.width),
                                          int(msg.height)))
            elif mt == POINTCLOUD2:
                cloud_recs[conn.topic].append(_CloudRec(ref, s, msg.header.frame_id,
                                                        int(msg.width) * int(msg.height)))

        # -- choose the topics ---------------------------------------------------------------
        def enc_of(topic):
            recs = images.get(topic, [])
            return Counter(r.encoding for r in recs).most_common(1)[0][0] if recs else ""

        depth_cands = sorted(t for t in images if is_depth_encoding(enc_of(t)))
        color_cands = sorted(t for t in images if is_color_encoding(enc_of(t)))
        if depth_topic is not None and depth_topic not in depth_cands:
            raise ValueError(f"depth_topic={depth_topic!r} carries encoding {enc_of(depth_topic)!r}; expected "
                             "16UC1, mono16 or 32FC1")
        if color_topic is not None and color_topic not in color_cands:
            raise ValueError(f"color_topic={color_topic!r} carries encoding {enc_of(color_topic)!r}; expected "
                             "rgb8, bgr8, rgba8, bgra8 or mono8")
        if depth_topic is None and depth_cands:
            depth_topic = max(depth_cands, key=lambda t: ("depth" in t.lower(), len(images[t]), t))
        if color_topic is None and color_cands and depth_topic is not None:
            # A real colour encoding before mono8 (a RealSense bag's infra1 shares the colour
            # camera's topic prefix), then the prefix shared with the depth topic.
            color_topic = max(color_cands, key=lambda t: (enc_of(t) != "mono8", _common_prefix(t, depth_topic),
                                                          any(w in t.lower() for w in ("color", "colour", "rgb")),
                                                          len(images[t]), t))
        if info_topic is None and infos and depth_topic is not None:
            info_topic = max(infos, key=lambda t: (_common_prefix(t, depth_topic), len(infos[t]), t))
        if cloud_topic is None and cloud_recs:
            cloud_topic = max(cloud_recs, key=lambda t: (
                any(w in t.lower() for w in ("lidar", "velodyne", "livox", "ouster", "hesai", "points")),
                len(cloud_recs[t]), t))
        if depth_topic is None and cloud_topic is None:
            raise ValueError(f"{self.path}: no depth images (sensor_msgs/msg/Image 16UC1/mono16/32FC1) and no "
                             f"sensor_msgs/msg/PointCloud2 topic; topics: {dict(sorted(all_topics.items()))}")

        # -- the TF tree ----------------------------------------------------------------------
        for parent, child, s, t, q, topic in topic_sources:
            tree.add(parent, child, s, t, q, static=False, source=topic, only_new_edges=True)
        depth_recs = images.get(depth_topic, []) if depth_topic else []
        clouds_sel = cloud_recs.get(cloud_topic, []) if cloud_topic else []
        # Colour is painted pixel for pixel onto the depth image: right when the depth is registered
        # to the colour camera (the same frame id), off by the baseline otherwise.
        depth_frames = {_frame(r.frame_id) for r in depth_recs}
        color_frames = {_frame(r.frame_id) for r in images.get(color_topic, [])} if color_topic else set()
        color_frame_differs = sorted(color_frames - depth_frames) if color_frames and depth_frames else []
        if color_frame_differs:
            log.warning("%s: colour images (%s, frame %s) are not in the depth images' frame %s: colour "
                        "is applied as if the depth were registered to the colour camera, off by their "
                        "baseline (record depth aligned to colour for exact colours)", self.path, color_topic,
                        color_frame_differs, sorted(depth_frames))
        for r in depth_recs:
            r.frame_id = self._sensor_frame(depth_topic, "depth", r.frame_id)
        for r in clouds_sel:
            r.frame_id = self._sensor_frame(cloud_topic, "cloud", r.frame_id)
        sensor_frames = sorted({r.frame_id for r in depth_recs} | {r.frame_id for r in clouds_sel})
        pose_topics_used = []
        usable_pose = [t for t in pose_stamped if "goal" not in t.lower()]
        if len(usable_pose) == 1:
            # The pose of a sensor frame without TF, or of the root of a sensor's static chain (a
            # robot pose with the driver's base_link -> camera links on /tf_static).
            bodies = set()
            for f in sensor_frames:
                chain = tree.chain(f)
                if not chain and not any(e.parent == f for e in tree.edges.values()):
                    bodies.add(f)
                elif chain and all(e.static for e in chain):
                    bodies.add(chain[-1].parent)
            for body in sorted(bodies):
                for parent, s, t, q in pose_stamped[usable_pose[0]]:
                    if _frame(parent) != body:
                        tree.add(parent, body, s, t, q, static=False, source=usable_pose[0])
            if bodies:
                pose_topics_used.append(usable_pose[0])
        tree.finalize()
        self.tf = tree

        if map_frame is not None:
            self.map_frame = _frame(map_frame)
            if self.map_frame not in tree.frames and self.map_frame not in sensor_frames:
                raise ValueError(f"map_frame={map_frame!r} is not in the bag's TF (frames: {sorted(tree.frames)})")
        else:
            roots = Counter(tree.root(f) for f in sensor_frames if f in tree.frames)
            if roots:
                self.map_frame = max(roots, key=lambda r: (
                    roots[r], -(_MAP_NAME_PREFERENCE.index(r) if r in _MAP_NAME_PREFERENCE else 99), r))
            else:
                self.map_frame = ""

        # A map frame reached by static links only (a camera driver's /tf_static, no odometry):
        # every frame would get the same pose.
        paths = {f: tree.path(self.map_frame, f) for f in sensor_frames} if self.map_frame else {}
        static_only = sorted(f for f, p in paths.items() if p is not None and all(e.static for e in p[0] + p[1]))
        if static_only:
            log.warning("%s: sensor frames %s reach the map frame %r through static TF links only: every "
                        "frame gets the same pose (no odometry / localisation in the bag?)", self.path,
                        static_only, self.map_frame)

        # -- frames and their poses ----------------------------------------------------------
        skipped: Counter = Counter()
        missing_tf_by_frame: Counter = Counter()
        pose_cache: dict[tuple[str, int], np.ndarray | None] = {}

        def pose(frame_id, stamp):
            k = (frame_id, stamp)
            if k not in pose_cache:
                pose_cache[k] = (tree.lookup(self.map_frame, frame_id, stamp, self.tf_tol_ns)
                                 if self.map_frame else None)
            return pose_cache[k]

        entries: list[_Entry] = []
        color_recs = sorted(images.get(color_topic, []) if color_topic else [], key=lambda r: r.stamp_ns)
        color_ns = np.array([r.stamp_ns for r in color_recs], np.int64)
        info_list = sorted(infos.get(info_topic, []) if info_topic else [], key=lambda x: x[0])
        info_ns = np.array([x[0] for x in info_list], np.int64)
        n_unpaired = n_color_size = 0
        for r in depth_recs:
            if not is_depth_encoding(r.encoding):
                skipped["depth_encoding_changed"] += 1
                continue
            if not info_list:
                skipped["no_camera_info"] += 1
                continue
            j = int(np.searchsorted(info_ns, r.stamp_ns + self.pair_tol_ns, side="right")) - 1
            _, K, iw, ih = info_list[max(j, 0)]
            if (iw, ih) != (r.width, r.height):
                skipped["camera_info_size_mismatch"] += 1
                continue
            if not (np.all(np.isfinite(K)) and K[0, 0] > 0 and K[1, 1] > 0):
                skipped["camera_info_invalid_K"] += 1
                continue
            T = pose(r.frame_id, r.stamp_ns)
            if T is None:
                skipped["missing_tf"] += 1
                missing_tf_by_frame[r.frame_id] += 1
                continue
            color = None
            if len(color_ns):
                j = int(np.searchsorted(color_ns, r.stamp_ns))
                best = min((k for k in (j - 1, j) if 0 <= k < len(color_ns)),
                           key=lambda k: abs(int(color_ns[k]) - r.stamp_ns))
                c = color_recs[best]
                if abs(c.stamp_ns - r.stamp_ns) > self.pair_tol_ns or not is_color_encoding(c.encoding):
                    n_unpaired += 1
                elif (c.width, c.height) != (r.width, r.height):
                    n_color_size += 1
                else:
                    color = c
            entries.append(_Entry("rgbd", r.stamp_ns, r.frame_id, T, depth=r, color=color, K=K.copy()))
        for r in clouds_sel:
            T = pose(r.frame_id, r.stamp_ns)
            if T is None:
                skipped["missing_tf"] += 1
                missing_tf_by_frame[r.frame_id] += 1
                continue
            entries.append(_Entry("lidar", r.stamp_ns, r.frame_id, T, cloud=r))
        entries.sort(key=lambda e: (e.stamp_ns, e.kind != "rgbd"))
        self._entries = entries
        self.stamps_ns = np.array([e.stamp_ns for e in entries], np.int64)

        self._summary = {
            "path": str(self.path),
            "storage": _storage_name(self.path),
            "compression": {"mode": reader.compression_mode or None, "format": reader.compression_format or None},
            "map_frame": self.map_frame,
            "topics": {"depth": depth_topic, "color": color_topic, "camera_info": info_topic,
                       "cloud": cloud_topic, "tf": sorted(t for t in by_type[TF_MESSAGE]),
                       "pose_topics": sorted({s[5] for s in topic_sources}) + pose_topics_used},
            "candidates": {"depth": depth_cands, "color": color_cands, "camera_info": sorted(infos),
                           "cloud": sorted(cloud_recs)},
            "message_counts": dict(sorted(counts.items())),
            "sensor_frames": sensor_frames,
            "tf_frames": sorted(tree.frames),
            "frames": {"rgbd": sum(e.kind == "rgbd" for e in entries),
                       "lidar": sum(e.kind == "lidar" for e in entries), "total": len(entries)},
            "skipped": {"missing_tf": 0, **dict(skipped)},
            "missing_tf_by_frame": dict(missing_tf_by_frame),
            "depth_without_color": n_unpaired,
            "color_frame_differs": color_frame_differs,
            "static_pose_frames": static_only,
            "color_size_mismatch": n_color_size,
            "header_stamp_zero": zero_stamps,
            "tf_conflicts": dict(tree.conflicts),
            "tf_invalid_samples": tree.invalid_samples,
            "undecodable": dict(undecodable),
            "time_span_s": float((self.stamps_ns[-1] - self.stamps_ns[0]) / 1e9) if len(entries) else 0.0,
        }
        if missing_tf_by_frame:
            log.warning("%s: %d frames skipped for missing TF (%s; map frame %r, TF frames %s)", self.path,
                        sum(missing_tf_by_frame.values()), dict(missing_tf_by_frame), self.map_frame,
                        sorted(tree.frames))
        other = {k: v for k, v in skipped.items() if k != "missing_tf" and v}
        if other:
            log.warning("%s: depth frames skipped: %s (camera_info: topic %r)", self.path, other, info_topic)
        if n_color_size:
            log.warning("%s: %d depth frames fused without colour: the colour images on %r are another size "
                        "than the depth (unaligned streams: record the depth-aligned colour topic)", self.path,
                        n_color_size, color_topic)
        if n_unpaired:
            log.warning("%s: %d depth frames fused without colour: no colour image within %.3f s on %r",
                        self.path, n_unpaired, self.pair_tol_ns / 1e9, color_topic)
        if not entries:
            if other and not skipped.get("missing_tf"):
                raise ValueError(f"{self.path}: every frame was skipped ({other}; camera_info topic "
                                 f"{info_topic!r}): expected a CameraInfo with the depth image's size and "
                                 "finite positive focal lengths")
            raise ValueError(f"{self.path}: no frame has a pose; skipped {dict(skipped)}, map frame "
                             f"{self.map_frame!r}, sensor frames {sensor_frames}, TF frames {sorted(tree.frames)}. "
                             "Expected /tf (or /tf_static) connecting the sensor frames to a map frame; "
                             "pass map_frame / sensor_frames to choose them")

    # -- the dataset interface ---------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, i: int) -> Frame:
        n = len(self._entries)
        i = int(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"frame index out of range [0, {n})")
        e = self._entries[i]
        if e.kind == "lidar":
            m = self._read(e.cloud.ref)
            pts = pointcloud2_to_xyz(m.fields, m.point_step, m.row_step, m.width, m.height, m.is_bigendian, m.data)
            return Frame(T_W_S=e.T.copy(), points=pts, stamp_ns=e.stamp_ns, frame_id=e.frame_id)
        m = self._read(e.depth.ref)
        depth = image_to_numpy(m.encoding, m.height, m.width, m.step, m.is_bigendian, m.data)
        rgb = None
        if e.color is not None:
            c = self._read(e.color.ref)
            rgb = image_to_numpy(c.encoding, c.height, c.width, c.step, c.is_bigendian, c.data)
        return Frame(T_W_S=e.T.copy(), depth=depth, rgb=rgb, K=e.K.copy(), stamp_ns=e.stamp_ns,
                     frame_id=e.frame_id, depth_scale=self.depth_scale if depth.dtype == np.uint16 else None)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    @property
    def poses(self) -> np.ndarray:
        """(len, 4, 4) float64 T_map_sensor of every frame, in frame order."""
        return np.array([e.T for e in self._entries]).reshape(-1, 4, 4)

    @property
    def kinds(self) -> list[str]:
        """"rgbd" or "lidar" for every frame, in frame order."""
        return [e.kind for e in self._entries]

    def summary(self) -> dict:
        """Topics chosen and candidates, message counts, map and sensor frames, frames produced,
        frames skipped (missing TF, missing / mismatched camera_info) and depth frames without a
        colour image within pair_tolerance_s."""
        import copy
        return copy.deepcopy(self._summary)


def _storage_name(path: Path) -> str:
    root = _bag_root(path)
    names = [p.name for p in root.iterdir()] if root.is_dir() else [root.name]
    return "mcap" if any(".mcap" in n for n in names) else "sqlite3"


def _vec(v) -> tuple[float, float, float]:
    return (float(v.x), float(v.y), float(v.z))


def _quat(q) -> tuple[float, float, float, float]:
    return (float(q.x), float(q.y), float(q.z), float(q.w))
