"""Sensor simulators by ray casting (Open3D `RaycastingScene`) and synthetic trajectories.

Frames: the camera follows the optical convention (x right, y down, z forward); the LiDAR frame
is x forward, y left, z up. Poses are `T_W_C` / `T_W_L` (sensor -> world), 4x4 float64.

Depth noise model (`render_rgbd(depth_noise=True)`): additive Gaussian along z with the axial
Kinect v1 model of Nguyen, Izadi and Lovell (3DIMPVT 2012),
    sigma(z) = 0.0012 + 0.0019 * (z - 0.4)^2   metres, z in metres,
i.e. 1.5 mm at 0.8 m, 5.6 mm at 2 m, 18 mm at 3.5 m.
"""
from __future__ import annotations

import weakref

import numpy as np

from voxmap_ros.sim.scenes import Scene

# open3d (the ray caster) is imported where rays are cast, so that the poses, trajectories and noise
# models here work on machines without it (the GPU machine has none).
_raycasters: "weakref.WeakKeyDictionary[Scene, o3d.t.geometry.RaycastingScene]" = weakref.WeakKeyDictionary()


def kinect_depth_sigma_m(z_m: np.ndarray) -> np.ndarray:
    """Axial depth noise standard deviation (metres) for z-depth `z_m` (any shape, metres, any
    numeric dtype; numpy): float64 of the same shape."""
    z_m = np.asarray(z_m, np.float64)
    return 0.0012 + 0.0019 * (z_m - 0.4) ** 2


def _raycaster(scene: Scene) -> o3d.t.geometry.RaycastingScene:
    # Building the BVH costs more than casting one image, so keep one per scene object.
    import open3d as o3d
    rc = _raycasters.get(scene)
    if rc is None:
        if len(scene.triangles) == 0:
            raise ValueError("cannot ray cast an empty scene (0 triangles)")
        rc = o3d.t.geometry.RaycastingScene()
        rc.add_triangles(o3d.core.Tensor(scene.vertices.astype(np.float32)),
                         o3d.core.Tensor(scene.triangles.astype(np.uint32)))
        _raycasters[scene] = rc
    return rc


def _cast(scene: Scene, origins: np.ndarray, dirs: np.ndarray):
    """Cast rays (N, 3) origins and (N, 3) directions (float, world frame). Returns t_hit (N,)
    float32 in units of the direction length (inf on miss), primitive ids (N,) int64 (-1 on miss),
    barycentric uv (N, 2) float32."""
    import open3d as o3d
    rays = np.concatenate([np.broadcast_to(origins, dirs.shape), dirs], 1).astype(np.float32)
    out = _raycaster(scene).cast_rays(o3d.core.Tensor(rays))
    prim = out["primitive_ids"].numpy().astype(np.int64)
    prim[prim == o3d.t.geometry.RaycastingScene.INVALID_ID] = -1
    return out["t_hit"].numpy(), prim, out["primitive_uvs"].numpy()


def _check_pose(T: np.ndarray, name: str) -> np.ndarray:
    T = np.asarray(T, np.float64)
    if T.shape != (4, 4) or not np.all(np.isfinite(T)):
        raise ValueError(f"{name} must be a finite (4, 4) matrix, got shape {T.shape}")
    if not np.allclose(T[3], [0, 0, 0, 1]) or not np.allclose(T[:3, :3] @ T[:3, :3].T, np.eye(3), atol=1e-4):
        raise ValueError(f"{name} must be a rigid transform (orthonormal rotation, last row 0 0 0 1)")
    return T


def render_rgbd(scene: Scene, K: np.ndarray, T_W_C: np.ndarray, width: int, height: int,
                depth_noise: bool = False, rng: np.random.Generator | None = None,
                max_depth_m: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one pinhole RGB-D frame.

    K (3, 3) float intrinsics (pixel (u, v) is at integer coordinates: the ray through pixel
    (u, v) has camera-frame direction ((u - cx) / fx, (v - cy) / fy, 1)); T_W_C (4, 4) float
    camera -> world, optical convention. Returns
      depth (H, W) float32 z-depth in metres (not ray length), 0 where nothing is hit or beyond
        `max_depth_m`; with `depth_noise` the Kinect model of this module is added (needs `rng`,
        defaults to a fixed seed);
      rgb (H, W, 3) uint8, barycentric interpolation of the hit triangle's vertex colours,
        0 where nothing is hit;
      labels (H, W) int32 semantic label of the hit triangle, -1 where nothing is hit.
    """
    K = np.asarray(K, np.float64)
    if K.shape != (3, 3) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ValueError(f"K must be (3, 3) with fx, fy > 0, got shape {K.shape}")
    if width <= 0 or height <= 0:
        raise ValueError(f"width and height must be > 0 pixels, got {width} x {height}")
    T_W_C = _check_pose(T_W_C, "T_W_C")
    u, v = np.meshgrid(np.arange(width), np.arange(height))
    d_C = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u, float)], -1)
    # With camera-frame directions of unit z, the hit parameter t is the z-depth itself.
    t, prim, uv = _cast(scene, T_W_C[:3, 3][None], d_C.reshape(-1, 3) @ T_W_C[:3, :3].T)
    hit = prim >= 0
    depth = np.where(hit, t, 0).astype(np.float32)
    if depth_noise:
        rng = rng if rng is not None else np.random.default_rng(0)
        noisy = depth + rng.standard_normal(depth.shape) * kinect_depth_sigma_m(depth)
        depth = np.where(hit & (noisy > 0), noisy, 0).astype(np.float32)
    if max_depth_m is not None:
        depth[depth > max_depth_m] = 0
    tri = scene.triangles[np.where(hit, prim, 0)]
    w = np.stack([1 - uv[:, 0] - uv[:, 1], uv[:, 0], uv[:, 1]], 1)[..., None]
    rgb = (scene.colors[tri].astype(np.float32) * w).sum(1)
    rgb = np.where(hit[:, None], np.clip(np.round(rgb), 0, 255), 0).astype(np.uint8)
    labels = np.where(hit, scene.labels[np.where(hit, prim, 0)], -1).astype(np.int32)
    return depth.reshape(height, width), rgb.reshape(height, width, 3), labels.reshape(height, width)


def lidar_directions(beams: int = 16, vfov_deg: tuple[float, float] = (-15.0, 15.0),
                     hfov_samples: int = 1024) -> np.ndarray:
    """(beams * hfov_samples, 3) float64 unit ray directions of a spinning multi-beam LiDAR in
    its own frame (x forward, z up), beams evenly spaced over `vfov_deg` (degrees), azimuths
    evenly spaced over a full turn."""
    if beams < 1 or hfov_samples < 1:
        raise ValueError(f"beams and hfov_samples must be >= 1, got {beams}, {hfov_samples}")
    lo, hi = vfov_deg
    if not -90 <= lo <= hi <= 90:
        raise ValueError(f"vfov_deg must be (low, high) degrees with -90 <= low <= high <= 90, got {vfov_deg}")
    elev = np.deg2rad(np.linspace(lo, hi, beams) if beams > 1 else np.array([(lo + hi) / 2]))
    az = 2 * np.pi * np.arange(hfov_samples) / hfov_samples
    e, a = np.meshgrid(elev, az, indexing="ij")
    return np.stack([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)], -1).reshape(-1, 3)


def scan_lidar(scene: Scene, T_W_L: np.ndarray, beams: int = 16,
               vfov_deg: tuple[float, float] = (-15.0, 15.0), hfov_samples: int = 1024,
               max_range_m: float = 100.0, noise_std_m: float = 0.0,
               rng: np.random.Generator | None = None, min_range_m: float = 0.0) -> np.ndarray:
    """One sweep of a spinning LiDAR at pose T_W_L (4, 4) float (sensor -> world).

    Returns points (N, 3) float32 in the sensor frame, one per ray that hits the scene within
    [min_range_m, max_range_m] (range measured before noise). `noise_std_m` adds Gaussian noise
    along each ray (needs `rng`, defaults to a fixed seed).
    """
    if max_range_m <= 0 or min_range_m < 0 or noise_std_m < 0:
        raise ValueError(f"need max_range_m > 0, min_range_m >= 0, noise_std_m >= 0; got "
                         f"{max_range_m}, {min_range_m}, {noise_std_m}")
    T_W_L = _check_pose(T_W_L, "T_W_L")
    d_L = lidar_directions(beams, vfov_deg, hfov_samples)
    r, prim, _ = _cast(scene, T_W_L[:3, 3][None], d_L @ T_W_L[:3, :3].T)
    keep = (prim >= 0) & (r <= max_range_m) & (r >= min_range_m)
    r, d_L = r[keep].astype(np.float64), d_L[keep]
    if noise_std_m > 0:
        rng = rng if rng is not None else np.random.default_rng(0)
        r = np.maximum(r + rng.standard_normal(r.shape) * noise_std_m, 0)
    return (d_L * r[:, None]).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Poses and trajectories

def look_at(eye, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """T_W_C (4, 4) float64 of a camera at `eye` (3,) looking at `target` (3,), world frame,
    optical convention: camera z towards the target, x right, y down (opposite to `up` (3,)).
    eye, target, up: numeric array-likes on the host (read as float64)."""
    eye, target, up = (np.asarray(x, np.float64).reshape(3) for x in (eye, target, up))
    z = target - eye
    if np.linalg.norm(z) < 1e-9:
        raise ValueError("look_at needs target != eye")
    z /= np.linalg.norm(z)
    x = np.cross(z, up)
    if np.linalg.norm(x) < 1e-6:
        raise ValueError("look_at: viewing direction is parallel to `up`; pass another up vector")
    x /= np.linalg.norm(x)
    T = np.eye(4)
    T[:3, 0], T[:3, 1], T[:3, 2], T[:3, 3] = x, np.cross(z, x), z, eye
    return T


def _body_pose(position, heading_rad: float) -> np.ndarray:
    """T_W_L for a z-up body frame (x forward along heading) at `position`."""
    c, s = np.cos(heading_rad), np.sin(heading_rad)
    T = np.eye(4)
    T[:3, :3] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    T[:3, 3] = position
    return T


def _room_center(scene: Scene) -> np.ndarray:
    lo, hi = scene.bounds
    return np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, lo[2]])


def indoor_camera_trajectory(scene: Scene, n_frames: int, seed: int = 0) -> list[np.ndarray]:
    """`n_frames` camera poses T_W_C (4, 4) float64 (optical convention) inside a room: the
    camera wanders within 0.6 m of the room centre at 1.2-1.6 m height and turns a full circle,
    looking slightly down so floor and furniture are seen. Smooth, so consecutive frames overlap."""
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    rng = np.random.default_rng(seed)
    c = _room_center(scene)
    phase = rng.uniform(0, 2 * np.pi, 4)
    s = np.arange(n_frames) / n_frames
    poses = []
    for si in s:
        eye = c + [0.5 * np.cos(2 * np.pi * si + phase[0]), 0.4 * np.sin(4 * np.pi * si + phase[1]),
                   1.4 + 0.2 * np.sin(2 * np.pi * si + phase[2])]
        yaw = phase[3] + 2 * np.pi * si + 0.3 * np.sin(6 * np.pi * si)
        pitch = -0.35 + 0.15 * np.sin(4 * np.pi * si + phase[2])        # radians, below horizon
        look = np.array([np.cos(yaw) * np.cos(pitch), np.sin(yaw) * np.cos(pitch), np.sin(pitch)])
        poses.append(look_at(eye, eye + look))
    return poses


def street_camera_trajectory(scene: Scene, n_frames: int, seed: int = 0) -> list[np.ndarray]:
    """`n_frames` camera poses T_W_C (4, 4) float64 for the street: driving along x at 1.5 m
    height, looking 45 degrees to the side (alternating sides every quarter of the run)."""
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    rng = np.random.default_rng(seed)
    lo, hi = scene.bounds
    xs = np.linspace(lo[0] + 4, hi[0] - 4, n_frames)
    y = rng.uniform(-1, 1)
    poses = []
    for i, x in enumerate(xs):
        side = 1 if (4 * i // max(n_frames, 1)) % 2 == 0 else -1
        eye = np.array([x, y, 1.5])
        poses.append(look_at(eye, eye + [1.0, side * 1.0, -0.15]))
    return poses


def camera_trajectory(scene: Scene, n_frames: int, seed: int = 0) -> list[np.ndarray]:
    """Camera poses suited to the scene kind: `street_camera_trajectory` for "outdoor",
    `indoor_camera_trajectory` otherwise."""
    if scene.kind == "outdoor":
        return street_camera_trajectory(scene, n_frames, seed)
    return indoor_camera_trajectory(scene, n_frames, seed)


def lidar_trajectory(scene: Scene, n: int, seed: int = 0, height_m: float = 1.8) -> list[np.ndarray]:
    """`n` LiDAR poses T_W_L (4, 4) float64, sensor `height_m` above the ground (z up, x along
    the direction of travel). Outdoor: driving along the street (x) near its centre line.
    Indoor: a loop of radius 0.6 m around the room centre."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    lo, hi = scene.bounds
    if scene.kind == "outdoor":
        xs = np.linspace(lo[0] + 2, hi[0] - 2, n)
        y0 = rng.uniform(-0.5, 0.5)
        ys = y0 + 0.3 * np.sin(np.linspace(0, 2 * np.pi, n))
        heading = np.arctan2(np.gradient(ys), np.gradient(xs)) if n > 1 else np.zeros(1)
        return [_body_pose((x, y, lo[2] + height_m), h) for x, y, h in zip(xs, ys, heading)]
    c = _room_center(scene)
    a0 = rng.uniform(0, 2 * np.pi)
    a = a0 + 2 * np.pi * np.arange(n) / n
    return [_body_pose(c + [0.6 * np.cos(t), 0.6 * np.sin(t), height_m], t + np.pi / 2) for t in a]
