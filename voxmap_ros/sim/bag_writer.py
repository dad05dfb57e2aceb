"""Write simulated (or any) RGB-D frames and LiDAR scans as a rosbag2 with standard messages.

Uses `rosbags` only (no ROS install). Topics written:
    /camera/depth/image_raw      sensor_msgs/msg/Image 16UC1 millimetres (or 32FC1 metres)
    /camera/color/image_raw      sensor_msgs/msg/Image rgb8
    /camera/depth/camera_info    sensor_msgs/msg/CameraInfo (K, P = [K | 0], plumb_bob, no distortion)
    /lidar/points                sensor_msgs/msg/PointCloud2 float32 x y z intensity, little-endian
    /tf                          tf2_msgs/msg/TFMessage map -> camera_optical and map -> lidar at each
                                 frame's stamp (or the samples passed as `tf_samples`)
    /tf_static                   tf2_msgs/msg/TFMessage, only when `static_tf` is given
Message header stamps equal the bag receive timestamps.

    write_bag("out/bag", rgbd_frames=[(depth_m, rgb, T_W_C), ...], K=K,
              lidar_scans=[(points_L, T_W_L), ...], storage="mcap")
    generate_bag("indoor", 0, "out/bag", n_frames=40, n_scans=20)   # + out/gt_mesh.ply
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from voxmap_ros.sim.dataset_writer import default_intrinsics, depth_to_uint16, write_gt_mesh

DEFAULT_BASE_TIME_NS = 1_700_000_000_000_000_000
DEPTH_TOPIC = "/camera/depth/image_raw"
COLOR_TOPIC = "/camera/color/image_raw"
INFO_TOPIC = "/camera/depth/camera_info"
CLOUD_TOPIC = "/lidar/points"
TF_TOPIC = "/tf"
TF_STATIC_TOPIC = "/tf_static"
STORAGES = ("sqlite3", "mcap")
_FLOAT32 = 7                       # sensor_msgs/msg/PointField.FLOAT32


def _typestore():
    from rosbags.typesys import Stores, get_typestore
    return get_typestore(Stores.ROS2_HUMBLE)


def matrix_to_quaternion(R: np.ndarray) -> np.ndarray:
    """(3, 3) rotation, any float dtype (numpy, host) -> (4,) float64 unit quaternion (x, y, z, w)
    with w >= 0 (Shepperd's method, stable for any rotation). R is re-orthonormalized first so
    slightly non-rigid input is tolerated."""
    R = np.asarray(R, np.float64)
    u, _, vt = np.linalg.svd(R)
    R = u @ vt
    if np.linalg.det(R) < 0:
        raise ValueError("rotation has determinant < 0 (a reflection); expected a proper rotation")
    tr = np.trace(R)
    i = int(np.argmax([tr, R[0, 0], R[1, 1], R[2, 2]]))
    if i == 0:
        s = 2.0 * np.sqrt(1.0 + tr)
        q = [(R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s, s / 4]
    elif i == 1:
        s = 2.0 * np.sqrt(1.0 + R[0, 0] - R[1, 1] - R[2, 2])
        q = [s / 4, (R[0, 1] + R[1, 0]) / s, (R[0, 2] + R[2, 0]) / s, (R[2, 1] - R[1, 2]) / s]
    elif i == 2:
        s = 2.0 * np.sqrt(1.0 + R[1, 1] - R[0, 0] - R[2, 2])
        q = [(R[0, 1] + R[1, 0]) / s, s / 4, (R[1, 2] + R[2, 1]) / s, (R[0, 2] - R[2, 0]) / s]
    else:
        s = 2.0 * np.sqrt(1.0 + R[2, 2] - R[0, 0] - R[1, 1])
        q = [(R[0, 2] + R[2, 0]) / s, (R[1, 2] + R[2, 1]) / s, s / 4, (R[1, 0] - R[0, 1]) / s]
    q = np.array(q)
    q /= np.linalg.norm(q)
    return -q if q[3] < 0 else q


class MessageBuilder:
    """Builders for the few message types written, on one typestore."""

    def __init__(self, ts):
        self.ts = ts
        t = ts.types
        self.Time, self.Header = t["builtin_interfaces/msg/Time"], t["std_msgs/msg/Header"]
        self.Image, self.CameraInfo = t["sensor_msgs/msg/Image"], t["sensor_msgs/msg/CameraInfo"]
        self.RegionOfInterest = t["sensor_msgs/msg/RegionOfInterest"]
        self.PointCloud2, self.PointField = t["sensor_msgs/msg/PointCloud2"], t["sensor_msgs/msg/PointField"]
        self.TFMessage, self.TransformStamped = t["tf2_msgs/msg/TFMessage"], t["geometry_msgs/msg/TransformStamped"]
        self.Transform, self.Vector3 = t["geometry_msgs/msg/Transform"], t["geometry_msgs/msg/Vector3"]
        self.Quaternion = t["geometry_msgs/msg/Quaternion"]

    def header(self, stamp_ns: int, frame_id: str):
        sec, nsec = divmod(int(stamp_ns), 1_000_000_000)
        return self.Header(stamp=self.Time(sec=sec, nanosec=nsec), frame_id=frame_id)

    def image(self, stamp_ns, frame_id, arr: np.ndarray, encoding: str):
        """sensor_msgs/Image of arr (H, W) or (H, W, C) numpy, its dtype written little-endian
        (it must match `encoding`: uint16 for 16UC1, float32 for 32FC1, uint8 (H, W, 3) for rgb8)."""
        arr = np.ascontiguousarray(arr)
        h, w = arr.shape[:2]
        return self.Image(header=self.header(stamp_ns, frame_id), height=h, width=w, encoding=encoding,
                          is_bigendian=0, step=arr.strides[0],
                          data=np.frombuffer(arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes(),
                                             np.uint8))

    def camera_info(self, stamp_ns, frame_id, K: np.ndarray, width: int, height: int):
        """sensor_msgs/CameraInfo of intrinsics K (3, 3) float numpy, no distortion, P = [K | 0]."""
        P = np.zeros((3, 4))
        P[:, :3] = K
        return self.CameraInfo(header=self.header(stamp_ns, frame_id), height=height, width=width,
                               distortion_model="plumb_bob", d=np.zeros(5), k=K.reshape(9).astype(np.float64),
                               r=np.eye(3).reshape(9), p=P.reshape(12), binning_x=0, binning_y=0,
                               roi=self.RegionOfInterest(x_offset=0, y_offset=0, height=0, width=0,
                                                         do_rectify=False))

    def cloud(self, stamp_ns, frame_id, points: np.ndarray):
        """sensor_msgs/PointCloud2 of points (N, 3) xyz or (N, 4) xyz + intensity, any real dtype
        on the host (written as float32)."""
        pts = np.asarray(points, np.float32)
        if pts.ndim != 2 or pts.shape[1] not in (3, 4):
            raise ValueError(f"LiDAR points must be (N, 3) xyz or (N, 4) xyz+intensity, got {pts.shape}")
        xyzi = np.zeros((len(pts), 4), "<f4")
        xyzi[:, :pts.shape[1]] = pts
        fields = [self.PointField(name=n, offset=4 * i, datatype=_FLOAT32, count=1)
                  for i, n in enumerate(("x", "y", "z", "intensity"))]
        return self.PointCloud2(header=self.header(stamp_ns, frame_id), height=1, width=len(pts), fields=fields,
                                is_bigendian=False, point_step=16, row_step=16 * len(pts),
                                data=np.frombuffer(xyzi.tobytes(), np.uint8), is_dense=True)

    def transform(self, stamp_ns, parent, child, T: np.ndarray):
        """geometry_msgs/TransformStamped parent -> child of T (4, 4) finite, any real dtype on the
        host (read as float64)."""
        T = np.asarray(T, np.float64)
        if T.shape != (4, 4) or not np.all(np.isfinite(T)):
            raise ValueError(f"transform {parent} -> {child} must be a finite (4, 4) matrix, got {T.shape}")
        q = matrix_to_quaternion(T[:3, :3])
        return self.TransformStamped(
            header=self.header(stamp_ns, parent), child_frame_id=child,
            transform=self.Transform(translation=self.Vector3(x=T[0, 3], y=T[1, 3], z=T[2, 3]),
                                     rotation=self.Quaternion(x=q[0], y=q[1], z=q[2], w=q[3])))


def _stamps(n: int, rate_hz: float, base_ns: int, given, what: str) -> list[int]:
    if given is not None:
        if len(given) != n:
            raise ValueError(f"{what}: got {len(given)} stamps for {n} frames; expected one per frame")
        return [int(s) for s in given]
    if rate_hz <= 0:
        raise ValueError(f"{what}: rate must be > 0 Hz, got {rate_hz}")
    return [base_ns + int(round(i * 1e9 / rate_hz)) for i in range(n)]


def write_bag(out_path, *, rgbd_frames: Sequence | None = None, K: np.ndarray | None = None,
              lidar_scans: Sequence | None = None, storage: str = "sqlite3", compress: bool | str = False,
              map_frame: str = "map", camera_frame: str = "camera_optical", lidar_frame: str = "lidar",
              rgbd_rate_hz: float = 10.0, lidar_rate_hz: float = 10.0,
              base_time_ns: int = DEFAULT_BASE_TIME_NS, depth_scale: float = 1000.0,
              depth_encoding: str = "16UC1", rgbd_stamps_ns: Sequence[int] | None = None,
              lidar_stamps_ns: Sequence[int] | None = None, tf_samples: Sequence | None = None,
              static_tf: Sequence | None = None) -> Path:
    """Write a rosbag2 directory at `out_path` (must not exist) and return its path.

    rgbd_frames: list of (depth_m (H, W) float metres, 0 = no reading; rgb (H, W, 3) uint8 RGB or
    None; T_W_C (4, 4) float camera -> map), with K (3, 3) float; all numpy (host). Depth is
    written as 16UC1 in units of 1/depth_scale metre (rounded as `dataset_writer.depth_to_uint16`)
    or, with depth_encoding="32FC1", as float32 metres. lidar_scans: list of (points (N, 3) or (N, 4) with
    intensity, any float dtype (written as float32), sensor frame; T_W_L (4, 4) float).
    Frame i is stamped base_time_ns + i / rate_hz unless rgbd_stamps_ns / lidar_stamps_ns give
    the stamps. /tf carries map -> camera_frame / map -> lidar_frame at each frame's stamp, unless
    `tf_samples` (list of (stamp_ns, parent, child, T_parent_child 4x4)) is given: then exactly
    those are written. `static_tf` (list of (parent, child, T_parent_child)) goes to /tf_static.
    storage: "sqlite3" or "mcap". compress: False, True / "message" (per-message zstd) or "file"
    (per-file zstd).
    """
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.rosbag2.enums import CompressionFormat, CompressionMode

    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}")
    modes = {False: None, None: None, True: CompressionMode.MESSAGE, "message": CompressionMode.MESSAGE,
             "file": CompressionMode.FILE}
    if compress not in modes:
        raise ValueError(f"compress must be False, True, 'message' or 'file', got {compress!r}")
    if depth_encoding not in ("16UC1", "32FC1"):
        raise ValueError(f"depth_encoding must be '16UC1' or '32FC1', got {depth_encoding!r}")
    rgbd_frames = list(rgbd_frames or [])
    lidar_scans = list(lidar_scans or [])
    if not rgbd_frames and not lidar_scans:
        raise ValueError("nothing to write: pass rgbd_frames and/or lidar_scans")
    if rgbd_frames:
        if K is None or np.shape(K) != (3, 3):
            raise ValueError(f"rgbd_frames need K (3, 3), got {None if K is None else np.shape(K)}")
        K = np.asarray(K, np.float64)
    rgbd_ns = _stamps(len(rgbd_frames), rgbd_rate_hz, base_time_ns, rgbd_stamps_ns, "rgbd_frames")
    lidar_ns = _stamps(len(lidar_scans), lidar_rate_hz, base_time_ns, lidar_stamps_ns, "lidar_scans")

    ts = _typestore()
    mk = MessageBuilder(ts)
    # (stamp, order, topic, msgtype, message) -> written in time order; stable for equal stamps
    out: list[tuple[int, int, str, str, object]] = []
    for i, (depth_m, rgb, T_W_C) in enumerate(rgbd_frames):
        depth_m = np.asarray(depth_m)
        if depth_m.ndim != 2:
            raise ValueError(f"rgbd frame {i}: depth must be (H, W), got {depth_m.shape}")
        h, w = depth_m.shape
        t = rgbd_ns[i]
        if depth_encoding == "16UC1":
            depth_msg = mk.image(t, camera_frame, depth_to_uint16(depth_m, depth_scale), "16UC1")
        else:
            depth_msg = mk.image(t, camera_frame, depth_m.astype(np.float32), "32FC1")
        out.append((t, len(out), DEPTH_TOPIC, "sensor_msgs/msg/Image", depth_msg))
        if rgb is not None:
            rgb = np.asarray(rgb)
            if rgb.shape != (h, w, 3) or rgb.dtype != np.uint8:
                raise ValueError(f"rgbd frame {i}: rgb must be ({h}, {w}, 3) uint8, got {rgb.shape} {rgb.dtype}")
            out.append((t, len(out), COLOR_TOPIC, "sensor_msgs/msg/Image", mk.image(t, camera_frame, rgb, "rgb8")))
        out.append((t, len(out), INFO_TOPIC, "sensor_msgs/msg/CameraInfo", mk.camera_info(t, camera_frame, K, w, h)))
        if tf_samples is None:
            out.append((t, len(out), TF_TOPIC, "tf2_msgs/msg/TFMessage",
                        mk.TFMessage(transforms=[mk.transform(t, map_frame, camera_frame, T_W_C)])))
    for i, (points, T_W_L) in enumerate(lidar_scans):
        t = lidar_ns[i]
        out.append((t, len(out), CLOUD_TOPIC, "sensor_msgs/msg/PointCloud2", mk.cloud(t, lidar_frame, points)))
        if tf_samples is None:
            out.append((t, len(out), TF_TOPIC, "tf2_msgs/msg/TFMessage",
                        mk.TFMessage(transforms=[mk.transform(t, map_frame, lidar_frame, T_W_L)])))
    for stamp, parent, child, T in (tf_samples or []):
        out.append((int(stamp), len(out), TF_TOPIC, "tf2_msgs/msg/TFMessage",
                    mk.TFMessage(transforms=[mk.transform(int(stamp), parent, child, T)])))
    if static_tf:
        t0 = min(o[0] for o in out)
        out.append((t0, -1, TF_STATIC_TOPIC, "tf2_msgs/msg/TFMessage",
                    mk.TFMessage(transforms=[mk.transform(t0, p, c, T) for p, c, T in static_tf])))
    out.sort(key=lambda o: (o[0], o[1]))

    plugin = StoragePlugin.SQLITE3 if storage == "sqlite3" else StoragePlugin.MCAP
    path = Path(out_path)
    writer = Writer(path, version=Writer.VERSION_LATEST, storage_plugin=plugin)
    if modes[compress] is not None:
        writer.set_compression(modes[compress], CompressionFormat.ZSTD)
    with writer:
        conns = {}
        for stamp, _, topic, msgtype, msg in out:
            if topic not in conns:
                conns[topic] = writer.add_connection(topic, msgtype, typestore=ts)
            writer.write(conns[topic], stamp, bytes(ts.serialize_cdr(msg, msgtype)))
    return path


def generate_bag(kind: str, seed: int, out_path, n_frames: int = 40, n_scans: int = 20,
                 storage: str = "sqlite3", compress: bool | str = False, noise: bool = True,
                 width: int = 320, height: int = 240, lidar_beams: int = 16,
                 lidar_hfov_samples: int = 1024) -> dict:
    """Simulate scene `kind` ("indoor" / "outdoor") with `seed`, render `n_frames` RGB-D frames
    (30 Hz) and `n_scans` LiDAR scans (10 Hz) along the simulator's trajectories, and write them as
    a rosbag2 at `out_path` (see `write_bag`), plus `gt_mesh.ply` and `scene.json` next to it (in
    out_path's parent folder). Returns a summary dict with paths, counts and elapsed seconds."""
    from voxmap_ros.sim.scenes import make_scene
    from voxmap_ros.sim.sensors import camera_trajectory, lidar_trajectory, render_rgbd, scan_lidar

    if n_frames < 0 or n_scans < 0 or n_frames + n_scans == 0:
        raise ValueError(f"need n_frames, n_scans >= 0 and at least one of them > 0; got {n_frames}, {n_scans}")
    t0 = time.perf_counter()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    scene = make_scene(kind, seed)
    rng = np.random.default_rng(seed)
    K = default_intrinsics(width, height)
    frames = []
    if n_frames:
        for T in camera_trajectory(scene, n_frames, seed):
            depth, rgb, _ = render_rgbd(scene, K, T, width, height, depth_noise=noise, rng=rng)
            frames.append((depth, rgb, T))
    scans = [(scan_lidar(scene, T, beams=lidar_beams, hfov_samples=lidar_hfov_samples,
                         noise_std_m=0.02 if noise else 0.0, rng=rng), T)
             for T in (lidar_trajectory(scene, n_scans, seed) if n_scans else [])]
    write_bag(out, rgbd_frames=frames, K=K if frames else None, lidar_scans=scans, storage=storage,
              compress=compress, rgbd_rate_hz=30.0, lidar_rate_hz=10.0)
    mesh = write_gt_mesh(out.parent / "gt_mesh.ply", scene)
    meta = {"kind": kind, "seed": int(seed), "bag": str(out), "storage": storage, "compress": compress,
            "label_names": {str(k): v for k, v in scene.label_names.items()},
            "object_names": {str(k): v for k, v in scene.object_names.items()},
            "bounds_m": scene.bounds.tolist(), "n_frames": n_frames, "n_scans": n_scans,
            "image_size": [width, height], "depth_scale": 1000.0, "noise": bool(noise)}
    (out.parent / "scene.json").write_text(json.dumps(meta, indent=2))
    return {"kind": kind, "seed": int(seed), "bag": str(out), "gt_mesh": str(mesh),
            "scene_json": str(out.parent / "scene.json"), "n_frames": n_frames, "n_scans": n_scans,
            "n_triangles": len(scene), "elapsed_s": time.perf_counter() - t0}
