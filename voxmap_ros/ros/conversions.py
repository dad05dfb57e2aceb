"""ROS messages <-> numpy, and the map's mesh -> visualization_msgs/MarkerArray.

Only this package (`voxmap_ros.ros`) imports message types. Payload decoding (Image, PointCloud2)
lives in the ROS-free `voxmap_ros.datasets.msg_decode`, shared with the bag reader; this module
pulls the fields out of the rclpy message and calls it.

Conventions: stamps are int nanoseconds; `T_A_B` (4, 4) float64 maps frame-B points into frame A;
colour images in numpy are RGB uint8 whatever the wire encoding.
"""
from __future__ import annotations

import array
import contextlib
import gc
import math
import re
import struct
import sys
import time
from typing import Any, Mapping

import numpy as np
import torch

from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import (Point, Pose, PoseStamped, PoseWithCovarianceStamped, Quaternion, Transform,
                               TransformStamped, Vector3)
from nav_msgs.msg import MapMetaData, OccupancyGrid, Odometry
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

from ..core import morton
from ..datasets import msg_decode
from ..poses import check_rigid, pose_from_xyz_quat, rotation_to_quat
from ..types import Grid2D

_NS_PER_S = 1_000_000_000
_INT32_MAX = 2**31 - 1
_NATIVE_BIGENDIAN = sys.byteorder == "big"


# ============================================================================ time
def stamp_to_ns(stamp: Any) -> int:
    """builtin_interfaces/Time (or anything with `sec`, `nanosec`) -> int nanoseconds."""
    sec, nsec = int(stamp.sec), int(stamp.nanosec)
    if not 0 <= nsec < _NS_PER_S:
        raise ValueError(f"stamp nanosec must lie in [0, 1e9), got {nsec}")
    return sec * _NS_PER_S + nsec


def ns_to_stamp(ns: int) -> Time:
    """int nanoseconds (>= 0, seconds fitting int32) -> builtin_interfaces/Time."""
    if isinstance(ns, (bool, np.bool_)) or not isinstance(ns, (int, np.integer)):
        raise ValueError(f"stamp_ns must be an integer number of nanoseconds, got {ns!r}")
    ns = int(ns)
    sec, nsec = divmod(ns, _NS_PER_S)
    if ns < 0 or sec > _INT32_MAX:
        raise ValueError(f"stamp_ns {ns} outside [0, {_INT32_MAX} s] (builtin_interfaces/Time range)")
    return Time(sec=sec, nanosec=nsec)


def _header(stamp_ns: int, frame_id: str) -> Header:
    return Header(stamp=ns_to_stamp(stamp_ns), frame_id=str(frame_id))


# ============================================================================ images
# wire encoding -> (numpy dtype, channels on the wire) for numpy_to_image_msg
_IMAGE_ENCODINGS = {
    "rgb8": (np.uint8, 3), "bgr8": (np.uint8, 3), "rgba8": (np.uint8, 4), "bgra8": (np.uint8, 4),
    "mono8": (np.uint8, 1), "mono16": (np.uint16, 1), "16UC1": (np.uint16, 1), "32FC1": (np.float32, 1),
}


def image_msg_to_numpy(msg: Image) -> np.ndarray:
    """sensor_msgs/Image -> numpy (a fresh array): rgb8/bgr8/rgba8/bgra8/mono8 -> (H, W, 3) uint8 RGB;
    16UC1/mono16 -> (H, W) uint16; 32FC1 -> (H, W) float32. ValueError for other encodings or a
    malformed payload (see msg_decode.image_to_numpy)."""
    return msg_decode.image_to_numpy(msg.encoding, msg.height, msg.width, msg.step, msg.is_bigendian, msg.data)


def numpy_to_image_msg(array_: np.ndarray, encoding: str, stamp_ns: int, frame_id: str,
                       step: int | None = None) -> Image:
    """numpy -> sensor_msgs/Image (native byte order).

    Colour encodings take RGB input, (H, W, 3) uint8 (for rgba8/bgra8 also (H, W, 4) RGBA; alpha
    255 when absent), and lay the bytes out as the encoding says; mono8 takes (H, W) uint8;
    mono16/16UC1 (H, W) uint16; 32FC1 (H, W) float32. `step` > row bytes pads each row with zeros.
    """
    if encoding not in _IMAGE_ENCODINGS:
        raise ValueError(f"unsupported encoding {encoding!r}; expected one of {list(_IMAGE_ENCODINGS)}")
    dtype, ch = _IMAGE_ENCODINGS[encoding]
    a = np.asarray(array_)
    if a.dtype != dtype:
        raise ValueError(f"{encoding} needs a {np.dtype(dtype).name} array, got {a.dtype}")
    if ch == 1:
        if a.ndim == 3 and a.shape[2] == 1:
            a = a[..., 0]
        if a.ndim != 2:
            raise ValueError(f"{encoding} needs an (H, W) array, got shape {a.shape}")
    else:
        if a.ndim != 3 or a.shape[2] not in ((3, 4) if ch == 4 else (3,)):
            raise ValueError(f"{encoding} needs an (H, W, 3) RGB{' or (H, W, 4) RGBA' if ch == 4 else ''} "
                             f"uint8 array, got shape {a.shape}")
        if ch == 4 and a.shape[2] == 3:
            a = np.concatenate([a, np.full(a.shape[:2] + (1,), 255, np.uint8)], axis=2)
        if encoding.startswith("bgr"):
            a = a[..., [2, 1, 0] + ([3] if ch == 4 else [])]
    h, w = a.shape[:2]
    row_bytes = w * ch * a.dtype.itemsize
    step = row_bytes if step is None else int(step)
    if step < row_bytes:
        raise ValueError(f"step {step} < row size {row_bytes} bytes")
    rows = np.ascontiguousarray(a).reshape(h, row_bytes // a.dtype.itemsize).view(np.uint8).reshape(h, row_bytes)
    if step > row_bytes:
        rows = np.concatenate([rows, np.zeros((h, step - row_bytes), np.uint8)], axis=1)
    data = array.array("B")
    data.frombytes(np.ascontiguousarray(rows).tobytes())
    return Image(header=_header(stamp_ns, frame_id), height=h, width=w, encoding=encoding,
                 is_bigendian=_NATIVE_BIGENDIAN, step=step, data=data)


# ============================================================================ camera info
def camera_info_to_K(msg: CameraInfo) -> np.ndarray:
    """sensor_msgs/CameraInfo -> intrinsics K (3, 3) float64. ValueError unless k is finite with
    fx, fy > 0 (an uncalibrated camera publishes all zeros)."""
    K = np.asarray(msg.k, dtype=np.float64).reshape(3, 3).copy()
    if not np.all(np.isfinite(K)):
        raise ValueError(f"CameraInfo.k must be finite, got {K.ravel().tolist()}")
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ValueError(f"CameraInfo.k needs fx > 0 and fy > 0, got fx={K[0, 0]}, fy={K[1, 1]} "
                         f"(is the camera calibrated?)")
    return K


def K_to_camera_info(K: np.ndarray, width: int, height: int, stamp_ns: int, frame_id: str) -> CameraInfo:
    """Pinhole K (3, 3) + image size -> sensor_msgs/CameraInfo (plumb_bob, zero distortion,
    R = I, P = [K | 0])."""
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3) or not np.all(np.isfinite(K)):
        raise ValueError(f"K must be a finite (3, 3) array, got shape {K.shape}")
    if int(width) <= 0 or int(height) <= 0:
        raise ValueError(f"width and height must be > 0, got {width} x {height}")
    P = np.zeros((3, 4))
    P[:, :3] = K
    return CameraInfo(header=_header(stamp_ns, frame_id), width=int(width), height=int(height),
                      distortion_model="plumb_bob", d=[0.0] * 5, k=K.ravel(), r=np.eye(3).ravel(), p=P.ravel())


# ============================================================================ point clouds
def pointcloud2_msg_to_xyz(msg: PointCloud2) -> np.ndarray:
    """sensor_msgs/PointCloud2 -> (N, 3) float32 x, y, z in the cloud's frame, non-finite points
    dropped (see msg_decode.pointcloud2_to_xyz)."""
    return msg_decode.pointcloud2_to_xyz(msg.fields, msg.point_step, msg.row_step, msg.width, msg.height,
                                         msg.is_bigendian, msg.data)


def pack_rgb_float(colors: np.ndarray) -> np.ndarray:
    """(N, 3) uint8 RGB -> (N,) float32 whose bits are 0x00RRGGBB (the PCL / RViz 'rgb' field)."""
    c = colors.astype(np.uint32)
    return ((c[:, 0] << 16) | (c[:, 1] << 8) | c[:, 2]).view(np.float32)


def unpack_rgb_float(rgb: np.ndarray) -> np.ndarray:
    """Inverse of pack_rgb_float: (N,) float32 -> (N, 3) uint8 RGB."""
    u = np.ascontiguousarray(rgb, dtype=np.float32).view(np.uint32)
    return np.stack([(u >> 16) & 0xFF, (u >> 8) & 0xFF, u & 0xFF], axis=1).astype(np.uint8)


def xyz_rgb_to_pointcloud2(points: np.ndarray, colors: np.ndarray | None, stamp_ns: int,
                           frame_id: str) -> PointCloud2:
    """(N, 3) float points (+ optional (N, 3) uint8 RGB) -> unorganized sensor_msgs/PointCloud2 with
    FLOAT32 fields x, y, z (offsets 0, 4, 8) and, with colours, rgb (offset 12, packed 0x00RRGGBB
    as RViz expects). is_dense reports whether every point is finite (True for map output)."""
    pts = np.asarray(points)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"points must have shape (N, 3), got {pts.shape}")
    n = pts.shape[0]
    fields = [PointField(name=c, offset=4 * i, datatype=PointField.FLOAT32, count=1) for i, c in enumerate("xyz")]
    if colors is not None:
        cols = np.asarray(colors)
        if cols.shape != (n, 3) or cols.dtype != np.uint8:
            raise ValueError(f"colors must be ({n}, 3) uint8, got {cols.shape} {cols.dtype}")
        fields.append(PointField(name="rgb", offset=12, datatype=PointField.FLOAT32, count=1))
    buf = np.empty((n, len(fields)), np.float32)
    buf[:, :3] = pts
    if colors is not None:
        buf[:, 3] = pack_rgb_float(cols)
    data = array.array("B")
    data.frombytes(buf.tobytes())
    step = 4 * len(fields)
    return PointCloud2(header=_header(stamp_ns, frame_id), height=1, width=n, fields=fields,
                       is_bigendian=_NATIVE_BIGENDIAN, point_step=step, row_step=step * n, data=data,
                       is_dense=bool(np.isfinite(buf[:, :3]).all()))


# ============================================================================ occupancy
def grid_to_occupancy_grid(grid: Grid2D, stamp_ns: int, frame_id: str, z_m: float = 0.0) -> OccupancyGrid:
    """Grid2D (data (H, W) int8 -1/0..100, row 0 = lowest y) -> nav_msgs/OccupancyGrid: width W,
    height H, origin = corner of cell (0, 0) at (origin_xy_m, z_m) with identity orientation,
    data row-major (index r * W + c), so grid.data[r, c] is the cell whose centre is
    origin + ((c + 0.5), (r + 0.5)) * resolution."""
    d = np.asarray(grid.data)
    if d.ndim != 2:
        raise ValueError(f"grid.data must be (H, W), got shape {d.shape}")
    if not np.issubdtype(d.dtype, np.integer):
        raise ValueError(f"grid.data must be integer (-1 unknown, 0..100), got {d.dtype}")
    if d.size and (int(d.min()) < -1 or int(d.max()) > 100):
        raise ValueError(f"grid.data values must lie in [-1, 100], got [{int(d.min())}, {int(d.max())}]")
    res = float(grid.resolution_m)
    ox, oy = (float(v) for v in grid.origin_xy_m)
    if not (math.isfinite(res) and res > 0 and math.isfinite(ox) and math.isfinite(oy) and math.isfinite(z_m)):
        raise ValueError(f"grid resolution must be > 0 and origin finite, got {res}, {(ox, oy, z_m)}")
    h, w = d.shape
    data = array.array("b")
    data.frombytes(np.ascontiguousarray(d, dtype=np.int8).tobytes())
    origin = Pose()
    origin.position = Point(x=ox, y=oy, z=float(z_m))
    info = MapMetaData(map_load_time=ns_to_stamp(stamp_ns), resolution=res, width=w, height=h, origin=origin)
    return OccupancyGrid(header=_header(stamp_ns, frame_id), info=info, data=data)


# ============================================================================ poses
def _xyz_quat_to_T(p, q) -> np.ndarray:
    return pose_from_xyz_quat((p.x, p.y, p.z), (q.x, q.y, q.z, q.w))


def pose_msg_to_matrix(msg) -> tuple[int, str, str | None, np.ndarray]:
    """PoseStamped / PoseWithCovarianceStamped / TransformStamped / Odometry ->
    (stamp_ns, frame_id (parent), child_frame_id or None, T_parent_child (4, 4) float64).
    ValueError for other types or a bad pose (non-finite, zero quaternion)."""
    if isinstance(msg, PoseStamped):
        T, child = _xyz_quat_to_T(msg.pose.position, msg.pose.orientation), None
    elif isinstance(msg, PoseWithCovarianceStamped):
        T, child = _xyz_quat_to_T(msg.pose.pose.position, msg.pose.pose.orientation), None
    elif isinstance(msg, TransformStamped):
        T, child = _xyz_quat_to_T(msg.transform.translation, msg.transform.rotation), msg.child_frame_id
    elif isinstance(msg, Odometry):
        T, child = _xyz_quat_to_T(msg.pose.pose.position, msg.pose.pose.orientation), msg.child_frame_id
    else:
        raise ValueError(f"unsupported pose message {type(msg).__name__}; expected PoseStamped, "
                         f"PoseWithCovarianceStamped, TransformStamped or Odometry")
    return stamp_to_ns(msg.header.stamp), msg.header.frame_id, child, T


def _xyz_quat(T) -> tuple[list[float], list[float]]:
    M = check_rigid(T)
    return M[:3, 3].tolist(), rotation_to_quat(M[:3, :3]).tolist()


def matrix_to_pose_msg(T: np.ndarray) -> Pose:
    """Rigid T (4, 4) -> geometry_msgs/Pose (ValueError when not rigid)."""
    t, q = _xyz_quat(T)
    return Pose(position=Point(x=t[0], y=t[1], z=t[2]), orientation=Quaternion(x=q[0], y=q[1], z=q[2], w=q[3]))


def matrix_to_transform_stamped(T: np.ndarray, stamp_ns: int, parent: str, child: str) -> TransformStamped:
    """Rigid T_parent_child (4, 4) -> geometry_msgs/TransformStamped."""
    t, q = _xyz_quat(T)
    return TransformStamped(header=_header(stamp_ns, parent), child_frame_id=str(child),
                            transform=Transform(translation=Vector3(x=t[0], y=t[1], z=t[2]),
                                                rotation=Quaternion(x=q[0], y=q[1], z=q[2], w=q[3])))


# ============================================================================ mesh -> markers
_new_point = Point.__new__
_new_color = ColorRGBA.__new__


def _make_point(x: float, y: float, z: float) -> Point:
    # Fills the slots directly: same object as Point(x=..), without the keyword parsing (2x faster).
    p = _new_point(Point)
    p._check_fields = False
    p._x, p._y, p._z = x, y, z
    return p


def _make_color(r: float, g: float, b: float) -> ColorRGBA:
    c = _new_color(ColorRGBA)
    c._check_fields = False
    c._r, c._g, c._b, c._a = r, g, b, 1.0
    return c


def _object_array(objs: list) -> np.ndarray:
    out = np.empty(len(objs), dtype=object)
    out[:] = objs
    return out


def triangles_to_marker_lists(vertices: np.ndarray, colors: np.ndarray,
                              vertex_keys: np.ndarray | None = None) -> tuple[list, list]:
    """Triangle-soup corners -> (points list[geometry_msgs/Point], colors list[std_msgs/ColorRGBA])
    for a TRIANGLE_LIST marker, one entry per corner, in order.

    vertices (N, 3) float (N = 3 * triangles), colors (N, 3) uint8 RGB, vertex_keys (N,) int64
    optional: corners with equal keys are the same vertex (marching-cubes weld keys). Equal keys and
    equal colours share one message object (read-only use: serialization reads each entry), which
    cuts object construction, the Python bottleneck, several-fold.
    """
    n = vertices.shape[0]
    if n == 0:
        return [], []
    if vertex_keys is not None:
        _, first, inv = np.unique(vertex_keys, return_index=True, return_inverse=True)
        v = vertices[first]
    else:
        inv, v = None, vertices
    v = v.astype(np.float64)
    pts = list(map(_make_point, v[:, 0].tolist(), v[:, 1].tolist(), v[:, 2].tolist()))
    if inv is not None:
        pts = _object_array(pts)[inv.reshape(-1)].tolist()
    c = colors.astype(np.uint32)
    packed = (c[:, 0] << 16) | (c[:, 1] << 8) | c[:, 2]
    ucol, cinv = np.unique(packed, return_inverse=True)
    rgb = np.stack([(ucol >> 16) & 0xFF, (ucol >> 8) & 0xFF, ucol & 0xFF], axis=1) / 255.0
    cobj = list(map(_make_color, rgb[:, 0].tolist(), rgb[:, 1].tolist(), rgb[:, 2].tolist()))
    cols = _object_array(cobj)[cinv.reshape(-1)].tolist()
    return pts, cols


@contextlib.contextmanager
def _gc_paused():
    """Pause the cyclic garbage collector while building many small message objects: they hold no
    cycles, and the collections their allocation triggers (each one walking the whole heap, which
    holds the previous markers) cost more than building them."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _identity_pose() -> Pose:
    p = Pose()
    p.orientation.w = 1.0
    return p


# ---------------------------------------------------------------------------- CDR fast path
# Building 3 message objects per triangle corner and then serializing them one attribute at a time
# is what makes mesh publishing slow in Python. `publisher.publish(bytes)` accepts a serialized
# message, so the chunker can also write the MarkerArray's CDR bytes itself: the per-corner arrays
# go straight from numpy. The writer walks the message definition (get_fields_and_field_types), so
# it follows the installed distro's Marker; `cdr_supported()` checks it against rclpy's own
# serializer once, and the chunker falls back to message objects if they disagree.
_CDR_PRIM = {"boolean": "?", "octet": "B", "byte": "B", "char": "B", "uint8": "B", "int8": "b",
             "uint16": "H", "int16": "h", "uint32": "I", "int32": "i", "uint64": "Q", "int64": "q",
             "float": "f", "double": "d"}
_SEQ_RE = re.compile(r"^sequence<(.+?)(?:, *\d+)?>$")
_ARR_RE = re.compile(r"^(.+)\[(\d+)\]$")


class _CdrWriter:
    """Little-endian XCDR1 (plain CDR) writer; offsets align relative to the byte after the
    4-byte encapsulation header, as the ROS 2 rmw implementations do."""

    def __init__(self):
        self.buf = bytearray(b"\x00\x01\x00\x00")
        self.pads: list[tuple[int, int]] = []      # (offset, length) of padding (for self-checks)

    def align(self, n: int) -> None:
        pad = (-(len(self.buf) - 4)) % n
        if pad:
            self.pads.append((len(self.buf), pad))
            self.buf += bytes(pad)

    def prim(self, code: str, value) -> None:
        size = struct.calcsize(code)
        self.align(size)
        if code == "B" and isinstance(value, (bytes, bytearray)):
            value = value[0]
        self.buf += struct.pack("<" + code, value)

    def string(self, value: str) -> None:
        b = value.encode("utf-8")
        self.prim("I", len(b) + 1)
        self.buf += b + b"\x00"

    def block(self, arr: np.ndarray, item_align: int) -> None:
        """Contiguous elements (already little-endian typed), aligned to their primitive size."""
        if arr.size:
            self.align(item_align)
            self.buf += arr.tobytes()

    def value(self, typ: str, value, overrides: Mapping[str, tuple] | None = None) -> None:
        if typ in _CDR_PRIM:
            self.prim(_CDR_PRIM[typ], value)
        elif typ == "string" or typ.startswith("string<"):
            self.string(value)
        elif (m := _SEQ_RE.match(typ)) is not None:
            self.prim("I", len(value))
            self._elements(m.group(1), value)
        elif (m := _ARR_RE.match(typ)) is not None:
            self._elements(m.group(1), value)
        elif "/" in typ:
            self.message(value, overrides)
        else:
            raise NotImplementedError(f"CDR writer: field type {typ!r}")

    def _elements(self, inner: str, value) -> None:
        if inner in _CDR_PRIM and inner != "boolean":
            code = _CDR_PRIM[inner]
            self.block(np.asarray(value, dtype=np.dtype("<" + code)), struct.calcsize(code))
        else:
            for v in value:
                self.value(inner, v)

    def message(self, msg, overrides: Mapping[str, tuple] | None = None) -> None:
        """Every field of `msg` in order; `overrides` maps a field name to (count, array, align) written
        as a sequence of `count` structs whose packed primitives are `array`."""
        for name, typ in msg.get_fields_and_field_types().items():
            if overrides and name in overrides:
                count, arr, item_align = overrides[name]
                self.prim("I", count)
                self.block(arr, item_align)
            else:
                self.value(typ, getattr(msg, name))


def _marker_array_cdr(items: list[tuple[Marker, np.ndarray | None, np.ndarray | None]],
                      writer: _CdrWriter | None = None) -> bytes:
    """CDR bytes of a MarkerArray. items: (marker, points (N, 3) float, colors (N, 4) float 0..1 or
    None); given arrays replace the marker's points / colors lists."""
    w = writer or _CdrWriter()
    w.prim("I", len(items))
    for marker, pts, cols in items:
        ov = {}
        if pts is not None:
            ov["points"] = (pts.shape[0], np.ascontiguousarray(pts, dtype="<f8"), 8)
        if cols is not None:
            ov["colors"] = (cols.shape[0], np.ascontiguousarray(cols, dtype="<f4"), 4)
        w.message(marker, ov)
    return bytes(w.buf)


_CDR_OK: bool | None = None


def cdr_supported() -> bool:
    """True when this module's MarkerArray CDR writer matches rclpy's serializer for the installed
    message definitions and rmw (checked once, on markers covering empty and filled sequences,
    odd string lengths and every alignment case)."""
    global _CDR_OK
    if _CDR_OK is None:
        try:
            from rclpy.serialization import serialize_message
            h = Header(stamp=Time(sec=12, nanosec=345), frame_id="odd")
            a = Marker(header=h, ns="n", id=3, type=Marker.TRIANGLE_LIST, action=Marker.ADD, text="x",
                       pose=_identity_pose(), scale=Vector3(x=1.0, y=1.0, z=1.0),
                       color=ColorRGBA(r=1.0, g=0.5, b=0.25, a=1.0))
            pts = np.array([[0.1, 0.2, 0.3], [1.5, -2.0, 3.25], [7.0, 8.0, 9.0]])
            cols = np.array([[0.1, 0.2, 0.3, 1.0], [0.4, 0.5, 0.6, 1.0], [0.7, 0.8, 0.9, 1.0]], np.float32)
            b = Marker(header=Header(frame_id="map12"), ns="voxmap", id=7, action=Marker.DELETE)
            ref = MarkerArray(markers=[b, a, b])
            a.points = [Point(x=float(x), y=float(y), z=float(z)) for x, y, z in pts]
            a.colors = [ColorRGBA(r=float(r), g=float(g), b=float(bb), a=float(al)) for r, g, bb, al in cols]
            want = bytearray(serialize_message(ref))
            a.points, a.colors = [], []
            w = _CdrWriter()
            got = _marker_array_cdr([(b, None, None), (a, pts, cols), (b, None, None)], w)
            for off, n in w.pads:              # rmw leaves padding bytes uninitialized
                want[off:off + n] = bytes(n)
            _CDR_OK = got == bytes(want)
        except Exception:                       # no rclpy C extension, an unknown field type...
            _CDR_OK = False
    return _CDR_OK


class MeshChunker:
    """Groups the map's triangles into octree chunks and emits RViz markers only for chunks that changed.

    A chunk is the level-`chunk_level` ancestor of a triangle's brick key (chunk_level 0: one chunk
    per brick; each level up is 2x wider per axis). Each chunk is one TRIANGLE_LIST marker in
    namespace `ns` with a stable id (assigned the first time the chunk is seen). The chunker keeps the
    current triangle soup of every chunk (numpy, CPU) so that `full_markers` can serve a late
    subscriber without touching the map.

    Two outputs with the same content: MarkerArray messages (`update`, `full_markers`) and their
    serialized CDR bytes (`update_cdr`, `full_markers_cdr`) for `publisher.publish(bytes)`, which
    skips building a Python object per triangle corner and is several times faster.
    """

    def __init__(self, chunk_level: int, ns: str = "voxmap_mesh"):
        if not 0 <= int(chunk_level) <= morton.MAX_LEVEL:
            raise ValueError(f"chunk_level must lie in [0, {morton.MAX_LEVEL}], got {chunk_level}")
        self.chunk_level = int(chunk_level)
        self.ns = str(ns)
        self._ids: dict[int, int] = {}
        # chunk key -> (corners (3T, 3) float32, colours (3T, 3) uint8, weld keys (3T,) int64)
        self._chunks: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.last_convert_ms = 0.0          # time spent building the last output (messages or bytes)

    @property
    def num_chunks(self) -> int:
        return len(self._chunks)

    @property
    def num_triangles(self) -> int:
        return sum(v.shape[0] for v, _, _ in self._chunks.values()) // 3

    def chunk_id(self, chunk_key: int) -> int:
        """Stable marker id of a chunk key (assigned on first use)."""
        k = int(chunk_key)
        if k not in self._ids:
            self._ids[k] = len(self._ids)
        return self._ids[k]

    def chunk_keys_of(self, brick_keys) -> np.ndarray:
        """Brick keys (N,) int64 (tensor or array) -> chunk keys (N,) int64 numpy."""
        return morton.ancestor(_cpu_keys(brick_keys), self.chunk_level).numpy()

    # ------------------------------------------------------------------ state
    def _refresh(self, store, changed_brick_keys, removed_brick_keys) -> list[tuple[int, bool]]:
        """Re-read the chunks touched by the given bricks from `store`; returns (chunk key, alive) for
        each chunk to publish: alive -> ADD its current triangles, not alive -> DELETE."""
        touched = torch.cat([_cpu_keys(changed_brick_keys), _cpu_keys(removed_brick_keys)])
        if touched.numel() == 0:
            return []
        affected = torch.unique(morton.ancestor(touched, self.chunk_level))
        dev = store.tri_brick_keys.device
        tri_chunk = morton.ancestor(store.tri_brick_keys, self.chunk_level)
        mask = torch.isin(tri_chunk, affected.to(dev))
        verts = store.tri_vertices[mask].cpu().numpy()
        cols = store.tri_colors[mask].cpu().numpy()
        ekeys = store.tri_edge_keys[mask].cpu().numpy()
        tchunk = tri_chunk[mask].cpu().numpy()
        order = np.argsort(tchunk, kind="stable")
        ukeys, starts = np.unique(tchunk[order], return_index=True)
        ends = np.append(starts[1:], tchunk.size)
        fresh = {}
        for k, s, e in zip(ukeys.tolist(), starts.tolist(), ends.tolist()):
            idx = order[s:e]
            fresh[k] = (np.ascontiguousarray(verts[idx].reshape(-1, 3), dtype=np.float32),
                        np.ascontiguousarray(cols[idx].reshape(-1, 3), dtype=np.uint8),
                        ekeys[idx].reshape(-1))
        plan = []
        for k in affected.tolist():
            if k in fresh:
                self._chunks[k] = fresh[k]
                plan.append((k, True))
            elif self._chunks.pop(k, None) is not None:
                plan.append((k, False))
        return plan

    # ------------------------------------------------------------------ messages
    def _template(self, chunk_key: int, header: Header, alive: bool) -> Marker:
        if not alive:
            return Marker(header=header, ns=self.ns, id=self.chunk_id(chunk_key), action=Marker.DELETE)
        return Marker(header=header, ns=self.ns, id=self.chunk_id(chunk_key), type=Marker.TRIANGLE_LIST,
                      action=Marker.ADD, pose=_identity_pose(), scale=Vector3(x=1.0, y=1.0, z=1.0),
                      color=ColorRGBA(r=1.0, g=1.0, b=1.0, a=1.0))

    def _messages(self, plan: list[tuple[int, bool]], frame_id: str, stamp_ns: int) -> MarkerArray:
        t0 = time.perf_counter()
        header = _header(stamp_ns, frame_id)
        markers = []
        with _gc_paused():
            for k, alive in plan:
                m = self._template(k, header, alive)
                if alive:
                    m.points, m.colors = triangles_to_marker_lists(*self._chunks[k])
                markers.append(m)
        self.last_convert_ms = (time.perf_counter() - t0) * 1e3
        return MarkerArray(markers=markers)

    def _cdr(self, plan: list[tuple[int, bool]], frame_id: str, stamp_ns: int) -> bytes | None:
        if not plan:
            return None
        if not cdr_supported():                   # rclpy serializes the message objects instead
            from rclpy.serialization import serialize_message
            return bytes(serialize_message(self._messages(plan, frame_id, stamp_ns)))
        t0 = time.perf_counter()
        header = _header(stamp_ns, frame_id)
        items = []
        for k, alive in plan:
            m = self._template(k, header, alive)
            if alive:
                v, c, _ = self._chunks[k]
                rgba = np.empty((c.shape[0], 4), np.float32)
                rgba[:, :3] = c * np.float32(1.0 / 255.0)
                rgba[:, 3] = 1.0
                items.append((m, v.astype(np.float64), rgba))
            else:
                items.append((m, None, None))
        out = _marker_array_cdr(items)
        self.last_convert_ms = (time.perf_counter() - t0) * 1e3
        return out

    def update(self, store, changed_brick_keys, removed_brick_keys, frame_id: str = "map",
               stamp_ns: int = 0) -> MarkerArray:
        """Refresh the chunks that contain changed or removed bricks from the full mesh `store`
        (core.mesh.BrickMesh, any device; e.g. Mapper.mesh_store() after update_mesh()) and return a
        MarkerArray with an ADD marker per refreshed non-empty chunk (points: 3 per triangle,
        per-corner colours) and a DELETE marker per chunk that became empty; no markers when nothing
        changed. changed_brick_keys (M,) / removed_brick_keys (R,): int64 level-0 brick keys
        (MeshUpdate.remeshed_keys / removed_keys), tensor or array."""
        return self._messages(self._refresh(store, changed_brick_keys, removed_brick_keys), frame_id, stamp_ns)

    def update_cdr(self, store, changed_brick_keys, removed_brick_keys, frame_id: str = "map",
                   stamp_ns: int = 0) -> bytes | None:
        """Same as `update`, returned as the serialized MarkerArray (bytes for `publisher.publish`),
        or None when nothing changed."""
        return self._cdr(self._refresh(store, changed_brick_keys, removed_brick_keys), frame_id, stamp_ns)

    def full_markers(self, frame_id: str = "map", stamp_ns: int = 0) -> MarkerArray:
        """Every current chunk as an ADD marker (for a late subscriber)."""
        return self._messages([(k, True) for k in self._chunks], frame_id, stamp_ns)

    def full_markers_cdr(self, frame_id: str = "map", stamp_ns: int = 0) -> bytes | None:
        """`full_markers` serialized (None when there is no chunk)."""
        return self._cdr([(k, True) for k in self._chunks], frame_id, stamp_ns)

    def delete_all(self, frame_id: str = "map", stamp_ns: int = 0) -> MarkerArray:
        """Forget every chunk and return one DELETEALL marker (RViz clears the namespace). Chunk ids
        stay assigned, so a chunk that comes back gets its old id."""
        self._chunks.clear()
        return MarkerArray(markers=[Marker(header=_header(stamp_ns, frame_id), ns=self.ns, id=0,
                                           action=Marker.DELETEALL)])


def _cpu_keys(keys) -> torch.Tensor:
    """int64 keys (tensor on any device, array or list) -> (N,) int64 CPU tensor."""
    if isinstance(keys, torch.Tensor):
        return keys.reshape(-1).to("cpu", torch.int64)
    return torch.as_tensor(np.asarray(keys, dtype=np.int64).reshape(-1))


# ============================================================================ diagnostics
_LEVELS = {"ok": 0, "warn": 1, "error": 2, "stale": 3}


def _level_byte(level) -> bytes:
    if isinstance(level, (bytes, bytearray)) and len(level) == 1:
        v = level[0]
    elif isinstance(level, str) and level.lower() in _LEVELS:
        v = _LEVELS[level.lower()]
    elif isinstance(level, (int, np.integer)) and not isinstance(level, bool):
        v = int(level)
    else:
        raise ValueError(f"diagnostic level must be 0..3, a DiagnosticStatus constant or one of {list(_LEVELS)}, "
                         f"got {level!r}")
    if v not in (0, 1, 2, 3):
        raise ValueError(f"diagnostic level must be 0 (OK), 1 (WARN), 2 (ERROR) or 3 (STALE), got {v}")
    return bytes([v])


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def make_diagnostics(name: str, hardware_id: str, level, message: str, values: Mapping[str, Any],
                     stamp_ns: int) -> DiagnosticArray:
    """One DiagnosticStatus wrapped in a diagnostic_msgs/DiagnosticArray. level: 0..3, 'ok' / 'warn' /
    'error' / 'stale', or a DiagnosticStatus constant (bytes); values become KeyValue strings
    (floats with 6 significant digits)."""
    status = DiagnosticStatus(level=_level_byte(level), name=str(name), message=str(message),
                              hardware_id=str(hardware_id),
                              values=[KeyValue(key=str(k), value=_fmt(v)) for k, v in values.items()])
    return DiagnosticArray(header=_header(stamp_ns, ""), status=[status])
