"""ROS message payloads -> numpy, without ROS: one implementation for the bag reader and the node.

Both functions take the message's fields as plain values, so they work on `rosbags` messages,
rclpy messages and hand-built test data alike. Nothing here loops over points or pixels in
Python: the payload is viewed through a strided numpy array and copied once.

    pointcloud2_to_xyz(msg.fields, msg.point_step, msg.row_step, msg.width, msg.height,
                       msg.is_bigendian, msg.data) -> (N, 3) float32
    image_to_numpy(msg.encoding, msg.height, msg.width, msg.step, msg.is_bigendian, msg.data)
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

# sensor_msgs/msg/PointField datatypes -> numpy base type (byte order added per cloud)
POINTFIELD_DTYPES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 8: "f8"}
POINTFIELD_NAMES = {1: "INT8", 2: "UINT8", 3: "INT16", 4: "UINT16", 5: "INT32", 6: "UINT32",
                    7: "FLOAT32", 8: "FLOAT64"}

# encoding -> (numpy base type, channels); colour encodings become (H, W, 3) uint8 RGB
_COLOR_ENCODINGS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}
_DEPTH_ENCODINGS = {"16uc1": "u2", "mono16": "u2", "32fc1": "f4"}
COLOR_ENCODINGS = tuple(_COLOR_ENCODINGS)
DEPTH_ENCODINGS = ("16UC1", "mono16", "32FC1")


def is_depth_encoding(encoding: str) -> bool:
    """True for the single-channel depth encodings this module decodes (16UC1, mono16, 32FC1)."""
    return str(encoding).strip().lower() in _DEPTH_ENCODINGS


def is_color_encoding(encoding: str) -> bool:
    """True for the 8-bit colour / grey encodings this module decodes (rgb8, bgr8, rgba8, bgra8, mono8)."""
    return str(encoding).strip().lower() in _COLOR_ENCODINGS


def _as_bytes(data: Any, what: str) -> np.ndarray:
    """Any buffer (bytes, bytearray, memoryview, array.array, uint8 ndarray) or a list of ints ->
    1-D uint8 ndarray, without copying where the input supports the buffer protocol."""
    if isinstance(data, np.ndarray):
        if not data.flags.c_contiguous:
            data = np.ascontiguousarray(data)
        return data.reshape(-1).view(np.uint8)
    try:
        return np.frombuffer(memoryview(data).cast("B"), np.uint8)
    except TypeError:
        try:
            return np.asarray(data, dtype=np.uint8).reshape(-1)
        except (TypeError, ValueError):
            raise ValueError(f"{what}: data must be bytes or a sequence of uint8, got {type(data).__name__}") from None


def _field(f: Any) -> tuple[str, int, int, int]:
    """(name, offset, datatype, count) of a PointField given as an object with attributes, a dict
    or a tuple (name, offset, datatype[, count])."""
    if isinstance(f, dict):
        return str(f["name"]), int(f["offset"]), int(f["datatype"]), int(f.get("count", 1))
    if isinstance(f, (tuple, list)):
        return str(f[0]), int(f[1]), int(f[2]), int(f[3]) if len(f) > 3 else 1
    return str(f.name), int(f.offset), int(f.datatype), int(getattr(f, "count", 1))


def pointcloud2_to_xyz(fields: Sequence[Any], point_step: int, row_step: int, width: int, height: int,
                       is_bigendian: bool, data: Any) -> np.ndarray:
    """Decode the x, y, z fields of a sensor_msgs/PointCloud2 payload.

    fields: PointFields (objects with name/offset/datatype[/count], dicts, or tuples); x, y and z
    are found by name and may be any PointField datatype (7 FLOAT32 and 8 FLOAT64 usual), at any
    offset inside `point_step` bytes. Rows are `row_step` bytes apart (padding allowed), `height`
    rows of `width` points (height > 1: organized cloud). Byte order from `is_bigendian`.
    Returns (N, 3) float32 in the cloud's frame, points with any NaN/inf coordinate dropped
    (organized clouds are flattened row by row). Raises ValueError naming the problem when x, y or
    z is missing, a field does not fit in point_step, row_step < width * point_step, or the data
    is shorter than row_step * height.
    """
    width, height, point_step, row_step = int(width), int(height), int(point_step), int(row_step)
    if width < 0 or height < 0:
        raise ValueError(f"PointCloud2: width and height must be >= 0, got {width} x {height}")
    by_name = {}
    for f in fields:
        name, offset, datatype, count = _field(f)
        by_name.setdefault(name, (offset, datatype, count))
    missing = [c for c in "xyz" if c not in by_name]
    if missing:
        raise ValueError(f"PointCloud2: no field named {', '.join(missing)} (fields: "
                         f"{sorted(by_name)}); expected float x, y and z fields")
    order = ">" if is_bigendian else "<"
    offsets, formats = [], []
    for c in "xyz":
        offset, datatype, _ = by_name[c]
        if datatype not in POINTFIELD_DTYPES:
            raise ValueError(f"PointCloud2: field {c} has unknown datatype {datatype}; expected one of "
                             f"{POINTFIELD_NAMES} (7 = FLOAT32, 8 = FLOAT64)")
        dt = np.dtype(order + POINTFIELD_DTYPES[datatype])
        if offset < 0 or offset + dt.itemsize > point_step:
            raise ValueError(f"PointCloud2: field {c} ({POINTFIELD_NAMES[datatype]} at offset {offset}) "
                             f"does not fit in point_step {point_step} bytes")
        offsets.append(offset)
        formats.append(dt)
    n = width * height
    if n == 0:
        return np.zeros((0, 3), np.float32)
    if row_step < width * point_step:
        raise ValueError(f"PointCloud2: row_step {row_step} < width {width} * point_step {point_step}")
    buf = _as_bytes(data, "PointCloud2")
    need = row_step * height
    if len(buf) < need:
        raise ValueError(f"PointCloud2: data has {len(buf)} bytes, expected at least row_step {row_step} "
                         f"* height {height} = {need} (truncated message)")
    rec = np.dtype({"names": ["x", "y", "z"], "formats": formats, "offsets": offsets, "itemsize": point_step})
    view = np.ndarray((height, width), dtype=rec, buffer=buf, offset=0, strides=(row_step, point_step))
    xyz = np.empty((height, width, 3), np.float32)
    for j, c in enumerate("xyz"):           # three fields, not a loop over points
        xyz[..., j] = view[c]
    xyz = xyz.reshape(n, 3)
    ok = np.isfinite(xyz).all(axis=1)
    return xyz if ok.all() else np.ascontiguousarray(xyz[ok])


def image_to_numpy(encoding: str, height: int, width: int, step: int, is_bigendian: bool, data: Any) -> np.ndarray:
    """Decode a sensor_msgs/Image payload.

    rgb8 / bgr8 / rgba8 / bgra8 / mono8 -> (H, W, 3) uint8 in RGB order (alpha dropped, grey
    replicated); 16UC1 / mono16 -> (H, W) uint16; 32FC1 -> (H, W) float32. Rows are `step` bytes
    apart (padding allowed); multi-byte pixels follow `is_bigendian`. The result is a fresh
    native-endian array that does not reference `data`. Raises ValueError for other encodings,
    step < width * bytes per pixel, or data shorter than step * height.
    """
    enc = str(encoding).strip().lower()
    height, width, step = int(height), int(width), int(step)
    if height < 0 or width < 0:
        raise ValueError(f"Image: height and width must be >= 0, got {height} x {width}")
    if enc in _COLOR_ENCODINGS:
        channels = _COLOR_ENCODINGS[enc]
        dt = np.dtype(np.uint8)
        shape, strides = (height, width, channels), (step, channels, 1)
    elif enc in _DEPTH_ENCODINGS:
        channels = 1
        dt = np.dtype((">" if is_bigendian else "<") + _DEPTH_ENCODINGS[enc])
        shape, strides = (height, width), (step, dt.itemsize)
    else:
        raise ValueError(f"Image: unsupported encoding {encoding!r}; expected one of "
                         f"{list(COLOR_ENCODINGS) + list(DEPTH_ENCODINGS)}")
    row_bytes = width * channels * dt.itemsize
    if step < row_bytes:
        raise ValueError(f"Image ({encoding}): step {step} < width {width} * {channels * dt.itemsize} "
                         f"bytes per pixel = {row_bytes}")
    buf = _as_bytes(data, f"Image ({encoding})")
    need = step * height
    if len(buf) < need:
        raise ValueError(f"Image ({encoding}): data has {len(buf)} bytes, expected at least step {step} "
                         f"* height {height} = {need} (truncated message)")
    if height == 0 or width == 0:
        view = np.zeros(shape, dt)
    else:
        view = np.ndarray(shape, dtype=dt, buffer=buf, offset=0, strides=strides)
    if enc in _DEPTH_ENCODINGS:
        return view.astype(dt.newbyteorder("="), copy=True)
    if enc == "rgb8":
        return view.copy()
    if enc == "rgba8":
        return np.ascontiguousarray(view[..., :3])
    if enc in ("bgr8", "bgra8"):
        return np.ascontiguousarray(view[..., 2::-1])
    return np.repeat(view, 3, axis=2)       # mono8
