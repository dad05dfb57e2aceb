"""Write simulated sensor data as folder datasets that `voxmap_ros.datasets.folder` reads.

RGB-D folder:  color/NNNNNN.png (RGB), depth/NNNNNN.png (uint16, depth_m * depth_scale, 0 = no
               reading), intrinsics.txt (3x3 K), poses.txt (16 numbers per row, row-major T_W_C),
               times.txt (seconds, one per frame; optional).
LiDAR folder:  velodyne/NNNNNN.bin (float32 rows x y z intensity, KITTI layout), poses.txt (12
               numbers per row, the top 3 rows of T_W_L row-major), times.txt (seconds).
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import cv2
import numpy as np

from voxmap_ros.sim.scenes import Scene, make_scene
from voxmap_ros.sim.sensors import camera_trajectory, lidar_trajectory, render_rgbd, scan_lidar

UINT16_NO_READING = 0
UINT16_MAX_VALID = 65534          # 65535 means "no reading" in some datasets (7-Scenes): never write it


def default_intrinsics(width: int, height: int, hfov_deg: float = 60.0) -> np.ndarray:
    """(3, 3) float64 pinhole K with square pixels, principal point at the image centre in the
    pixel-centre-at-integer convention ((W - 1) / 2, (H - 1) / 2), horizontal FOV `hfov_deg`."""
    if width <= 0 or height <= 0 or not 0 < hfov_deg < 180:
        raise ValueError(f"need width, height > 0 and 0 < hfov_deg < 180; got {width}, {height}, {hfov_deg}")
    f = (width / 2) / np.tan(np.deg2rad(hfov_deg) / 2)
    return np.array([[f, 0, (width - 1) / 2], [0, f, (height - 1) / 2], [0, 0, 1]])


def depth_to_uint16(depth_m: np.ndarray, depth_scale: float = 1000.0) -> np.ndarray:
    """(H, W) float metres -> (H, W) uint16 in units of 1/depth_scale metre, rounded. Invalid
    (<= 0 or non-finite) and out-of-range depths become 0 (no reading), never clipped."""
    d = np.asarray(depth_m, np.float64) * depth_scale
    ok = np.isfinite(d) & (d > 0) & (np.round(d) <= UINT16_MAX_VALID)
    return np.where(ok, np.round(np.where(ok, d, 0)), UINT16_NO_READING).astype(np.uint16)


def _write_matrix_rows(path: Path, rows: np.ndarray) -> None:
    np.savetxt(path, np.asarray(rows, np.float64).reshape(len(rows), -1), fmt="%.12e")


def write_rgbd_folder(out_dir, frames: list, K: np.ndarray, depth_scale: float = 1000.0,
                      times_s: list[float] | np.ndarray | None = None) -> Path:
    """Write an RGB-D folder. `frames`: list of (depth_m (H, W) float metres with 0 = no hit,
    rgb (H, W, 3) uint8 RGB or None, T_W_C (4, 4) float). K (3, 3) float. All numpy (host).
    `times_s` (optional, one per frame, seconds) goes to times.txt. Returns the folder path."""
    out = Path(out_dir)
    K = np.asarray(K, np.float64)
    if K.shape != (3, 3):
        raise ValueError(f"K must be (3, 3), got {K.shape}")
    if depth_scale <= 0:
        raise ValueError(f"depth_scale must be > 0 (units per metre), got {depth_scale}")
    if times_s is not None and len(times_s) != len(frames):
        raise ValueError(f"times_s has {len(times_s)} entries, expected one per frame ({len(frames)})")
    (out / "depth").mkdir(parents=True, exist_ok=True)
    poses = []
    for i, (depth_m, rgb, T_W_C) in enumerate(frames):
        T = np.asarray(T_W_C, np.float64)
        if T.shape != (4, 4):
            raise ValueError(f"frame {i}: T_W_C must be (4, 4), got {T.shape}")
        if np.ndim(depth_m) != 2:
            raise ValueError(f"frame {i}: depth must be (H, W), got shape {np.shape(depth_m)}")
        cv2.imwrite(str(out / "depth" / f"{i:06d}.png"), depth_to_uint16(depth_m, depth_scale))
        if rgb is not None:
            rgb = np.asarray(rgb)
            if rgb.shape != (*np.shape(depth_m), 3) or rgb.dtype != np.uint8:
                raise ValueError(f"frame {i}: rgb must be (H, W, 3) uint8 matching depth "
                                 f"{np.shape(depth_m)}, got {rgb.shape} {rgb.dtype}")
            (out / "color").mkdir(exist_ok=True)
            cv2.imwrite(str(out / "color" / f"{i:06d}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        poses.append(T.reshape(16))
    _write_matrix_rows(out / "intrinsics.txt", K)
    _write_matrix_rows(out / "poses.txt", np.array(poses).reshape(-1, 16))
    if times_s is not None:
        np.savetxt(out / "times.txt", np.asarray(times_s, np.float64), fmt="%.9f")
    return out


def write_lidar_folder(out_dir, scans: list, times_s: list[float] | np.ndarray | None = None,
                       scan_period_s: float = 0.1) -> Path:
    """Write a LiDAR folder in the KITTI layout. `scans`: list of (points (N, 3) float sensor
    frame, T_W_L (4, 4) float). `times_s` one per scan (seconds); default i * scan_period_s.
    Intensity is written as 0. Returns the folder path."""
    out = Path(out_dir)
    if times_s is None:
        times_s = np.arange(len(scans)) * scan_period_s
    if len(times_s) != len(scans):
        raise ValueError(f"times_s has {len(times_s)} entries, expected one per scan ({len(scans)})")
    (out / "velodyne").mkdir(parents=True, exist_ok=True)
    poses = []
    for i, (points, T_W_L) in enumerate(scans):
        pts = np.asarray(points, np.float32)
        T = np.asarray(T_W_L, np.float64)
        if pts.ndim != 2 or pts.shape[1] != 3:
            raise ValueError(f"scan {i}: points must be (N, 3), got {pts.shape}")
        if T.shape != (4, 4):
            raise ValueError(f"scan {i}: T_W_L must be (4, 4), got {T.shape}")
        xyzi = np.concatenate([pts, np.zeros((len(pts), 1), np.float32)], 1)
        xyzi.tofile(out / "velodyne" / f"{i:06d}.bin")
        poses.append(T[:3].reshape(12))
    _write_matrix_rows(out / "poses.txt", np.array(poses).reshape(-1, 12))
    np.savetxt(out / "times.txt", np.asarray(times_s, np.float64), fmt="%.9f")
    return out


def write_gt_mesh(path, scene: Scene) -> Path:
    """Write the scene's triangles with vertex colours as a PLY (binary) via Open3D."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    import open3d as o3d                    # here, so that importing voxmap_ros.sim needs no open3d
    m = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(scene.vertices.astype(np.float64)),
                                  o3d.utility.Vector3iVector(scene.triangles.astype(np.int32)))
    m.vertex_colors = o3d.utility.Vector3dVector(scene.colors.astype(np.float64) / 255.0)
    if not o3d.io.write_triangle_mesh(str(path), m, write_ascii=False):
        raise OSError(f"could not write mesh to {path}")
    return path


GT_LABELS_FILE = "gt_labels.npz"


def write_gt_labels(path, scene: Scene) -> Path:
    """Write the semantic label and object id of every triangle of gt_mesh.ply, in its triangle
    order: an .npz (no pickle) with `labels` and `object_ids`, (T,) int32 each; scene.json maps
    them to names (`label_names`, `object_names`)."""
    path = Path(path)
    with open(path, "wb") as f:
        np.savez(f, labels=scene.labels.astype(np.int32), object_ids=scene.object_ids.astype(np.int32))
    return path


def load_gt_labels(path) -> tuple[np.ndarray, np.ndarray]:
    """(labels (T,) int32, object_ids (T,) int32) from a file write_gt_labels wrote."""
    with np.load(path, allow_pickle=False) as z:
        return z["labels"], z["object_ids"]


_SENSOR_DIR_ENTRIES = {"color", "depth", "velodyne", "intrinsics.txt", "poses.txt", "times.txt"}


def _check_replaceable(folder: Path) -> Path | None:
    """`folder` when it holds a dataset folder that a new run replaces, None when it does not
    exist; ValueError when it holds anything else (never delete what this writer did not write)."""
    if not folder.exists():
        return None
    if not folder.is_dir() or not {c.name for c in folder.iterdir()} <= _SENSOR_DIR_ENTRIES:
        raise ValueError(f"{folder} exists and is not a dataset folder a previous run wrote; choose another "
                         "output folder")
    return folder


def generate_dataset(kind: str, seed: int, out_dir, n_frames: int = 40, n_scans: int = 20,
                     noise: bool = True, width: int = 320, height: int = 240,
                     lidar_beams: int = 16, lidar_hfov_samples: int = 1024) -> dict:
    """Simulate a scene and write `out_dir/rgbd/`, `out_dir/lidar/`, `out_dir/gt_mesh.ply` and
    `out_dir/scene.json` (kind, seed, label names, bounds, sizes). `noise` adds Kinect depth
    noise to RGB-D and 2 cm range noise to LiDAR. n_frames / n_scans = 0 skip that sensor.
    Returns a summary dict with the paths, counts and elapsed seconds."""
    if n_frames < 0 or n_scans < 0:
        raise ValueError(f"n_frames and n_scans must be >= 0, got {n_frames}, {n_scans}")
    t0 = time.perf_counter()
    out = Path(out_dir)
    scene = make_scene(kind, seed)
    stale = [_check_replaceable(out / name) for name in ("rgbd", "lidar")]     # before anything is written
    out.mkdir(parents=True, exist_ok=True)               # only once the scene exists: bad arguments leave nothing
    for d in stale:                                      # a previous run's frames would mix with these
        if d is not None:
            shutil.rmtree(d)
    rng = np.random.default_rng(seed)
    K = default_intrinsics(width, height)
    summary: dict = {"kind": kind, "seed": int(seed), "out_dir": str(out)}
    if n_frames:
        frames = []
        for T in camera_trajectory(scene, n_frames, seed):
            depth, rgb, _ = render_rgbd(scene, K, T, width, height, depth_noise=noise, rng=rng)
            frames.append((depth, rgb, T))
        # 30 Hz camera stamps, as a real RGB-D sensor would give.
        summary["rgbd_dir"] = str(write_rgbd_folder(out / "rgbd", frames, K, 1000.0,
                                                    times_s=np.arange(n_frames) / 30.0))
    if n_scans:
        scans = [(scan_lidar(scene, T, beams=lidar_beams, hfov_samples=lidar_hfov_samples,
                             noise_std_m=0.02 if noise else 0.0, rng=rng), T)
                 for T in lidar_trajectory(scene, n_scans, seed)]
        summary["lidar_dir"] = str(write_lidar_folder(out / "lidar", scans))
    summary["gt_mesh"] = str(write_gt_mesh(out / "gt_mesh.ply", scene))
    summary["gt_labels"] = str(write_gt_labels(out / GT_LABELS_FILE, scene))
    meta = {"kind": kind, "seed": int(seed), "label_names": {str(k): v for k, v in scene.label_names.items()},
            "object_names": {str(k): v for k, v in scene.object_names.items()},
            "triangle_labels": GT_LABELS_FILE,
            "bounds_m": scene.bounds.tolist(), "n_frames": n_frames, "n_scans": n_scans,
            "image_size": [width, height], "depth_scale": 1000.0, "noise": bool(noise)}
    (out / "scene.json").write_text(json.dumps(meta, indent=2))
    summary.update(scene_json=str(out / "scene.json"), n_frames=n_frames, n_scans=n_scans,
                   n_triangles=len(scene), elapsed_s=time.perf_counter() - t0)
    return summary
