"""Plain data carried between layers: sensor frames in, meshes out."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Frame:
    """One sensor observation with its pose.

    RGB-D: `depth` (H, W) uint16 (units of `depth_scale` per metre) or float32 metres; `rgb`
    optional (H, W, 3) uint8; `K` (3, 3) intrinsics. LiDAR: `points` (N, 3) float32/float64 in the
    sensor frame. `T_W_S` (4, 4) maps sensor-frame points into the world (map) frame.
    """
    T_W_S: np.ndarray
    depth: np.ndarray | None = None
    rgb: np.ndarray | None = None
    K: np.ndarray | None = None
    points: np.ndarray | None = None
    stamp_ns: int = 0
    frame_id: str = ""
    depth_scale: float | None = None   # overrides config.rgbd.depth_scale for uint16 depth

    @property
    def is_rgbd(self) -> bool:
        return self.depth is not None

    @property
    def is_lidar(self) -> bool:
        return self.points is not None


@dataclass
class MeshData:
    """A triangle mesh: vertices (V, 3) float32 metres in the map frame, triangles (T, 3) int64
    vertex indices, colors (V, 3) uint8."""
    vertices: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.float32))
    triangles: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.int64))
    colors: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.uint8))

    def __len__(self) -> int:
        return len(self.triangles)


@dataclass
class Grid2D:
    """A 2D occupancy grid with nav_msgs/OccupancyGrid semantics: data (H, W) int8 with -1 unknown,
    0 free, 100 occupied; row 0 is the lowest y; cell (r, c) has centre
    origin_xy_m + (c + 0.5, r + 0.5) * resolution_m."""
    data: np.ndarray
    resolution_m: float
    origin_xy_m: tuple[float, float]
