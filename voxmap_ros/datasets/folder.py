"""Folder datasets: one class per format behind `__len__` / `__getitem__` -> `Frame`.

RGB-D folder (TUM / 7-Scenes style, as written by `voxmap_ros.sim.dataset_writer`):
    color/NNNNNN.{png,jpg}  optional, RGB images (any 8-bit format OpenCV reads)
    depth/NNNNNN.png        uint16, `depth_scale` units per metre; 0 and 65535 mean no reading
    intrinsics.txt          3x3 K
    poses.txt               one row of 16 numbers per frame: row-major 4x4 T_W_C
    times.txt               optional, seconds, one per frame (else frame i is at i * 33 ms)
LiDAR folder (KITTI layout):
    velodyne/NNNNNN.bin     float32 rows x y z intensity, sensor frame
    poses.txt               one row of 12 numbers per scan: top 3 rows of T_W_L, row-major
    times.txt               optional, seconds, one per scan (else scan i is at i * 100 ms)
Files in a folder are paired by sorted name; all counts must match.
"""
from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np

from voxmap_ros.types import Frame

RGBD_FRAME_PERIOD_NS = 33_000_000
LIDAR_SCAN_PERIOD_NS = 100_000_000
DEPTH_NO_READING_ALT = 65535        # 7-Scenes marks missing depth with 65535 as well as 0
_IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".ppm"}
_BOTTOM_ROW_TOL = 1e-4


def _load_rows(path: Path, n_cols: int, what: str) -> np.ndarray:
    if not path.is_file():
        raise ValueError(f"missing {path.name} in {path.parent}: expected {what}")
    try:
        rows = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except ValueError as e:
        raise ValueError(f"{path}: could not parse numbers ({e}); expected {what}") from None
    if rows.size and rows.shape[1] != n_cols:
        raise ValueError(f"{path}: rows have {rows.shape[1]} numbers, expected {n_cols} ({what})")
    return rows.reshape(-1, n_cols)


def _load_times_ns(path: Path, n: int, period_ns: int) -> np.ndarray:
    if not (path / "times.txt").is_file():
        return np.arange(n, dtype=np.int64) * period_ns
    try:
        t = np.loadtxt(path / "times.txt", dtype=np.float64, ndmin=1).reshape(-1)
    except ValueError as e:
        raise ValueError(f"{path / 'times.txt'}: could not parse numbers ({e}); expected one time "
                         "(seconds) per frame") from None
    if not np.isfinite(t).all():
        raise ValueError(f"{path / 'times.txt'}: line {int(np.argmin(np.isfinite(t))) + 1} is not a finite "
                         "number; expected one time (seconds) per frame")
    if len(t) != n:
        raise ValueError(f"{path / 'times.txt'} has {len(t)} times but the folder has {n} frames; "
                         "expected one time (seconds) per frame")
    return np.round(t * 1e9).astype(np.int64)


def _sorted_files(folder: Path, exts: set[str]) -> list[Path]:
    """Files of `folder` with those extensions in frame order: numbers in names compare as numbers
    (0.png, 2.png, 10.png; zero-padded names sort the same either way), pairing the n-th file
    with the n-th pose."""
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in exts]
    return sorted(files, key=_natural_key)


def _natural_key(p: Path) -> tuple:
    return tuple((0, int(t), t) if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", p.name) if t)


def _check_index(i: int, n: int) -> int:
    i = int(i)
    if i < 0:
        i += n
    if not 0 <= i < n:
        raise IndexError(f"frame index out of range [0, {n})")
    return i


def _data_line_numbers(path: Path) -> list[int]:
    """1-based line numbers of the lines np.loadtxt reads as rows (not blank, not a # comment)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        return [i + 1 for i, ln in enumerate(f) if ln.split("#", 1)[0].strip()]


def _poses_from_rows(rows: np.ndarray, path: Path) -> tuple[np.ndarray, dict[int, str]]:
    """(N, 12 or 16) rows -> ((N, 4, 4) float64 T_W_S, {frame index: why its pose is refused}).

    A 4x4 whose bottom row is not 0 0 0 1 refuses that frame only (the replay skips it, as it
    does a NaN pose); when most rows are so, the file is another layout (column-major,
    transposed) and ValueError says so."""
    n = len(rows)
    T = np.tile(np.eye(4), (n, 1, 1))
    errors: dict[int, str] = {}
    if rows.shape[1] == 16:
        T[:] = rows.reshape(n, 4, 4)
        bad = np.flatnonzero(np.abs(T[:, 3] - [0, 0, 0, 1]).max(1) > _BOTTOM_ROW_TOL)
        if len(bad):
            lines = _data_line_numbers(path)
            for i in bad:
                errors[int(i)] = (f"{path}: line {lines[i]} (pose {i}) is not a 4x4 rigid transform in row-major "
                                  f"order (last four numbers {T[i, 3].tolist()}, expected 0 0 0 1)")
            if 2 * len(bad) > n:
                raise ValueError(f"{len(bad)} of {n} poses are not row-major 4x4 rigid transforms; first: "
                                 f"{errors[int(bad[0])]}")
    else:
        T[:, :3] = rows.reshape(n, 3, 4)
    return T, errors


def _check_pose_row(errors: dict[int, str], i: int) -> None:
    if i in errors:
        raise ValueError(errors[i])


class RgbdFolder:
    """RGB-D frames from a folder (layout in the module docstring).

    `frame = ds[i]`: depth (H, W) uint16 as stored, except 65535 which becomes 0 (no reading),
    with `frame.depth_scale`; rgb (H, W, 3) uint8 in RGB order (None without color/); K (3, 3)
    float64; T_W_S (4, 4) float64 camera -> world; stamp_ns; frame_id "camera".
    """

    frame_id = "camera"

    def __init__(self, path, depth_scale: float = 1000.0):
        self.path = Path(path)
        if depth_scale <= 0:
            raise ValueError(f"depth_scale must be > 0 (uint16 units per metre), got {depth_scale}")
        self.depth_scale = float(depth_scale)
        if not (self.path / "depth").is_dir():
            raise ValueError(f"{self.path}: missing depth/ folder of uint16 PNGs (RGB-D layout: depth/, "
                             "color/, intrinsics.txt, poses.txt)")
        self.depth_files = _sorted_files(self.path / "depth", {".png", ".tif", ".tiff"})
        n = len(self.depth_files)
        if n == 0:
            raise ValueError(f"{self.path / 'depth'} holds no depth images (expected NNNNNN.png)")
        self.color_files: list[Path] | None = None
        if (self.path / "color").is_dir():
            self.color_files = _sorted_files(self.path / "color", _IMAGE_EXTS)
            if len(self.color_files) != n:
                raise ValueError(f"{self.path}: color/ has {len(self.color_files)} images but depth/ has {n}; "
                                 "expected one colour image per depth image")
        K = _load_rows(self.path / "intrinsics.txt", 3, "a 3x3 intrinsics matrix K")
        if K.shape != (3, 3):
            raise ValueError(f"{self.path / 'intrinsics.txt'}: got {K.shape[0]} rows, expected a 3x3 matrix K")
        self.K = K
        rows = _load_rows(self.path / "poses.txt", 16, "one row of 16 numbers (row-major 4x4 T_W_C) per frame")
        if len(rows) != n:
            raise ValueError(f"{self.path / 'poses.txt'} has {len(rows)} poses but depth/ has {n} frames; "
                             "expected one pose per frame")
        self.poses, self.pose_errors = _poses_from_rows(rows, self.path / "poses.txt")
        self.stamps_ns = _load_times_ns(self.path, n, RGBD_FRAME_PERIOD_NS)

    def __len__(self) -> int:
        return len(self.depth_files)

    def __getitem__(self, i: int) -> Frame:
        i = _check_index(i, len(self))
        _check_pose_row(self.pose_errors, i)
        depth = cv2.imread(str(self.depth_files[i]), cv2.IMREAD_UNCHANGED)
        if depth is None or depth.dtype != np.uint16 or depth.ndim != 2:
            raise ValueError(f"{self.depth_files[i]}: expected a single-channel uint16 depth image, got "
                             f"{None if depth is None else (depth.dtype, depth.shape)}")
        depth[depth == DEPTH_NO_READING_ALT] = 0
        rgb = None
        if self.color_files is not None:
            # The pixels as stored, like the depth: an EXIF rotation would turn colour against depth.
            bgr = cv2.imread(str(self.color_files[i]), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
            if bgr is None:
                raise ValueError(f"{self.color_files[i]}: could not read the colour image")
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        return Frame(T_W_S=self.poses[i].copy(), depth=depth, rgb=rgb, K=self.K.copy(),
                     stamp_ns=int(self.stamps_ns[i]), frame_id=self.frame_id, depth_scale=self.depth_scale)

    def __iter__(self):
        return (self[i] for i in range(len(self)))


class LidarFolder:
    """LiDAR scans from a KITTI-layout folder (see the module docstring).

    `frame = ds[i]`: points (N, 3) float32 xyz in the sensor frame (intensity dropped); T_W_S
    (4, 4) float64 LiDAR -> world; stamp_ns; frame_id "lidar".
    """

    frame_id = "lidar"

    def __init__(self, path):
        self.path = Path(path)
        if not (self.path / "velodyne").is_dir():
            raise ValueError(f"{self.path}: missing velodyne/ folder of .bin scans (LiDAR layout: velodyne/, "
                             "poses.txt, times.txt)")
        self.scan_files = _sorted_files(self.path / "velodyne", {".bin"})
        n = len(self.scan_files)
        if n == 0:
            raise ValueError(f"{self.path / 'velodyne'} holds no scans (expected NNNNNN.bin)")
        rows = _load_rows(self.path / "poses.txt", 12, "one row of 12 numbers (top 3 rows of T_W_L) per scan")
        if len(rows) != n:
            raise ValueError(f"{self.path / 'poses.txt'} has {len(rows)} poses but velodyne/ has {n} scans; "
                             "expected one pose per scan")
        self.poses, self.pose_errors = _poses_from_rows(rows, self.path / "poses.txt")
        self.stamps_ns = _load_times_ns(self.path, n, LIDAR_SCAN_PERIOD_NS)

    def __len__(self) -> int:
        return len(self.scan_files)

    def __getitem__(self, i: int) -> Frame:
        i = _check_index(i, len(self))
        _check_pose_row(self.pose_errors, i)
        raw = np.fromfile(self.scan_files[i], dtype=np.float32)
        n_bytes = self.scan_files[i].stat().st_size
        if n_bytes % 16:                  # fromfile drops a partial float: check the bytes themselves
            raise ValueError(f"{self.scan_files[i]}: {n_bytes} bytes is not a multiple of 16; "
                             "expected float32 rows of x y z intensity (truncated file?)")
        points = np.ascontiguousarray(raw.reshape(-1, 4)[:, :3])
        return Frame(T_W_S=self.poses[i].copy(), points=points, stamp_ns=int(self.stamps_ns[i]),
                     frame_id=self.frame_id)

    def __iter__(self):
        return (self[i] for i in range(len(self)))


def open_dataset(path, depth_scale: float = 1000.0) -> RgbdFolder | LidarFolder:
    """Open a folder dataset, detecting its format: color/ or depth/ -> `RgbdFolder`
    (with `depth_scale`), velodyne/ -> `LidarFolder`. Raises ValueError when neither fits."""
    p = Path(path)
    if not p.is_dir():
        raise ValueError(f"dataset path {p} is not a directory; expected a folder with depth/ (+ color/, "
                         "intrinsics.txt, poses.txt) for RGB-D or velodyne/ (+ poses.txt) for LiDAR")
    if (p / "color").is_dir() or (p / "depth").is_dir():
        return RgbdFolder(p, depth_scale)
    if (p / "velodyne").is_dir():
        return LidarFolder(p)
    found = sorted(c.name for c in p.iterdir())[:10]
    storage = sorted(c.name for c in p.iterdir() if c.suffix in (".db3", ".mcap"))
    if storage:
        raise ValueError(f"{p}: holds rosbag2 storage files {storage[:3]} but no metadata.yaml (a recording "
                         f"that did not finish?); pass the file itself, e.g. {p / storage[0]}")
    raise ValueError(f"{p}: not a known dataset folder (found {found}); expected depth/ and color/ with "
                     "intrinsics.txt and poses.txt (RGB-D), or velodyne/ with poses.txt (LiDAR)")
