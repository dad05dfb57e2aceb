"""Checking and converting sensor frames before anything touches the map.

Every check raises ValueError naming what was wrong and what was expected, so that a caller can
reject a frame with the map unchanged.
"""
from __future__ import annotations

import numpy as np
import torch

from ..types import Frame

RIGIDITY_TOL = 1e-3        # max |R^T R - I| entry and |det R - 1| accepted as a rotation
SKEW_TOL = 1e-6            # max |K[0, 1]| / fx accepted as no skew
_LAST_ROW = np.array([0.0, 0.0, 0.0, 1.0])
_EYE3 = np.eye(3)


def check_pose(T: np.ndarray, name: str = "T_W_S") -> np.ndarray:
    """Validate a rigid transform T (4, 4), any float or integer dtype, on the host (numpy,
    list, CPU tensor); returns it as a float64 numpy array."""
    try:
        T = np.asarray(T)
    except (TypeError, ValueError, RuntimeError) as e:   # a CUDA tensor, one that requires grad, ragged lists
        raise ValueError(f"{name} must be a 4x4 matrix on the host (numpy, list, CPU tensor): {e}") from None
    if T.shape != (4, 4):
        raise ValueError(f"{name} must be a 4x4 matrix, got shape {T.shape}")
    if not np.issubdtype(T.dtype, np.floating) and not np.issubdtype(T.dtype, np.integer):
        raise ValueError(f"{name} must be numeric, got dtype {T.dtype}")
    T = T.astype(np.float64)
    if not np.isfinite(T).all():
        raise ValueError(f"{name} has non-finite entries")
    # Plain arithmetic rather than np.allclose / np.linalg.det: this runs once per frame, and
    # those cost ~10x as much as the checks themselves.
    if float(np.abs(T[3] - _LAST_ROW).max()) > 1e-9:
        raise ValueError(f"{name} last row must be [0 0 0 1], got {T[3].tolist()}")
    R = T[:3, :3]
    err = float(np.abs(R.T @ R - _EYE3).max())
    (a, b, c), (d, e, f), (g, h, i) = R.tolist()
    det = a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g)
    if err > RIGIDITY_TOL or abs(det - 1.0) > RIGIDITY_TOL:
        raise ValueError(f"{name} is not rigid: max|R^T R - I| = {err:.2e}, det R = {det:.4f} "
                         f"(expected a rotation, tolerance {RIGIDITY_TOL})")
    return T


def check_intrinsics(K: np.ndarray, allow_skew: bool = False) -> np.ndarray:
    """Validate pinhole intrinsics K (3, 3), any numeric array-like on the host (numpy, list, CPU
    tensor), with fx, fy > 0, and no skew unless allow_skew (fusion projects with fx, fy, cx, cy
    only; geometric queries take any pinhole K); returns a float64 numpy array."""
    if K is None:
        raise ValueError("an RGB-D frame needs intrinsics K (3x3), got None")
    try:
        K = np.asarray(K, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"K must be a numeric 3x3 matrix: {e}") from None
    if K.shape != (3, 3):
        raise ValueError(f"K must be a 3x3 matrix, got shape {K.shape}")
    if not np.isfinite(K).all() or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ValueError(f"K must be finite with fx, fy > 0, got fx={K[0, 0]}, fy={K[1, 1]}")
    with np.errstate(over="ignore"):
        K32 = K.astype(np.float32)          # what the kernels compute with
    if not np.isfinite(K32).all() or K32[0, 0] <= 0 or K32[1, 1] <= 0:
        raise ValueError(f"K must be finite with fx, fy > 0 in float32 (the kernels' precision), got "
                         f"fx={K32[0, 0]}, fy={K32[1, 1]}, cx={K32[0, 2]}, cy={K32[1, 2]} from {K[0].tolist()}, "
                         f"{K[1].tolist()}")
    if not np.allclose(K[2], [0.0, 0.0, 1.0]) or K[1, 0] != 0.0:
        raise ValueError(f"K must be a pinhole matrix [[fx s cx] [0 fy cy] [0 0 1]], got rows "
                         f"{K[1].tolist()} and {K[2].tolist()}")
    if not allow_skew and abs(K[0, 1]) > SKEW_TOL * K[0, 0]:
        # The fusion kernels project with fx, fy, cx, cy only: a skewed K would be fused wrongly.
        raise ValueError(f"K has skew K[0, 1] = {K[0, 1]}; expected 0 (rectified images, as ROS "
                         "CameraInfo gives them)")
    return K


def depth_to_metres(depth: np.ndarray, depth_scale: float) -> np.ndarray:
    """(H, W) uint16 in 1/depth_scale metres, or float32 metres -> (H, W) float32 metres, C order;
    invalid -> 0. numpy arrays (host)."""
    if depth.dtype == np.uint16:
        d = depth.astype(np.float32) / np.float32(depth_scale)
        d[depth == np.iinfo(np.uint16).max] = 0.0          # 65535 = "no reading" on common sensors
        return np.ascontiguousarray(d)
    d = np.array(depth, dtype=np.float32, order="C", copy=True)      # kernels read C order
    d[~np.isfinite(d) | (d < 0)] = 0.0
    return d


def prepare_rgbd(frame: Frame, depth_scale: float, device: torch.device):
    """frame: depth (H, W) uint16 or float32, rgb (H, W, 3) uint8 or None, K (3, 3) and T_W_S
    (4, 4) numeric, numpy arrays (host) -> (depth_m (H, W) float32, rgb (H, W, 3) uint8 | None,
    K (3, 3) float64, T (4, 4) float64), torch tensors on `device`."""
    depth = frame.depth
    if not isinstance(depth, np.ndarray) or depth.ndim != 2:
        raise ValueError(f"depth must be a 2-D numpy array (H, W), got {getattr(depth, 'shape', type(depth))}")
    if depth.dtype not in (np.uint16, np.float32):
        raise ValueError(f"depth must be uint16 (scaled) or float32 (metres), got {depth.dtype}")
    if depth.size == 0:
        raise ValueError("depth image is empty (0 pixels)")
    H, W = depth.shape
    rgb = frame.rgb
    if rgb is not None:
        if not isinstance(rgb, np.ndarray) or rgb.shape != (H, W, 3):
            raise ValueError(f"rgb must have shape (H, W, 3) = ({H}, {W}, 3) to match depth, got "
                             f"{getattr(rgb, 'shape', type(rgb))}")
        if rgb.dtype != np.uint8:
            raise ValueError(f"rgb must be uint8, got {rgb.dtype}")
    K = check_intrinsics(frame.K)
    T = check_pose(frame.T_W_S)
    scale = frame.depth_scale if frame.depth_scale is not None else depth_scale
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.number)) or not (scale > 0 and np.isfinite(scale)):
        raise ValueError(f"depth_scale must be a positive number, got {scale}")
    d = torch.from_numpy(depth_to_metres(depth, scale)).to(device)
    c = torch.from_numpy(np.ascontiguousarray(rgb)).to(device) if rgb is not None else None
    return d, c, torch.from_numpy(K).to(device), torch.from_numpy(T).to(device)


def prepare_lidar(frame: Frame, device: torch.device):
    """frame: points (N, 3) float32 or float64 and T_W_S (4, 4), numpy arrays (host) ->
    (points (N, 3) float32 finite, T (4, 4) float64) torch tensors on `device`; N may be 0."""
    pts = frame.points
    if not isinstance(pts, np.ndarray) or pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"points must be a numpy array of shape (N, 3), got {getattr(pts, 'shape', type(pts))}")
    if pts.dtype not in (np.float32, np.float64):
        raise ValueError(f"points must be float32 or float64, got {pts.dtype}")
    T = check_pose(frame.T_W_S)
    finite = np.isfinite(pts)
    if not finite.all():                  # rare: only then pay for the row filter and its copy
        pts = pts[finite.all(axis=1)]
    pts = np.ascontiguousarray(pts, dtype=np.float32)       # no copy for a C-order float32 cloud
    return torch.from_numpy(pts).to(device), torch.from_numpy(T).to(device)
