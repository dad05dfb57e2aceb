"""Pinhole camera for the rasterizer: validation and rays.

Conventions (same as voxmap_ros.sim.render_rgbd and the integrators):
- K (3, 3) intrinsics with last row (0, 0, 1); pixel (u, v) sits at integer coordinates, so the
  ray of pixel (u, v) has camera-frame direction K^-1 (u, v, 1), whose z component is 1.
- T_W_C (4, 4) camera -> world, optical axes x right, y down, z forward.
- Rays are parametrised by z-depth: x(t) = o + t * d with d = R (K^-1 (u, v, 1)), so the t of a
  point is its depth along the optical axis (not its distance), and near_m / far_m clip t.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

MAX_IMAGE_SIDE = 16384                 # pixels per side
MAX_IMAGE_PIXELS = 1 << 26             # 67 M pixels (8192 x 8192)
MAX_FAR_M = 1e12                       # the backends compute ray distances in float32
ROTATION_TOL = 2e-3                    # max |R^T R - I| and |det R - 1| for a rigid pose (poses from
                                       # files carry ~1e-4 of rounding; the rotation is re-orthonormalised)


def _as_matrix(x, name: str, shape: tuple[int, int]) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x.detach()
    else:
        a = np.asarray(x)
        if a.dtype.kind not in "fiu":                # bool, complex, strings, objects
            raise ValueError(f"{name} must be a {shape} float matrix (numpy array or tensor), got dtype {a.dtype}")
        try:
            t = torch.as_tensor(a.astype(np.float64))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{name} must be a {shape} float matrix (numpy array or tensor): {e}") from None
    if t.dtype.is_complex or t.dtype == torch.bool or t.is_quantized:   # numpy's rule: real floats and integers
        raise ValueError(f"{name} must hold real numbers, got dtype {t.dtype}")
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    t = t.to("cpu", torch.float64)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite, got {t.tolist()}")
    return t


def _as_size(x, name: str) -> int:
    if isinstance(x, bool) or not isinstance(x, (int, np.integer)) and not (
            isinstance(x, float) and float(x).is_integer()):
        raise ValueError(f"{name} must be an integer number of pixels, got {x!r}")
    v = int(x)
    if not 1 <= v <= MAX_IMAGE_SIDE:
        raise ValueError(f"{name} must be in [1, {MAX_IMAGE_SIDE}] pixels, got {v}")
    return v


@dataclass(frozen=True)
class Camera:
    """A validated pinhole camera. Build it with `make_camera` (which checks everything).

    K (3, 3) float64 CPU, T_W_C (4, 4) float64 CPU, width / height in pixels, near_m < far_m
    the z-depth range drawn."""
    K: torch.Tensor
    T_W_C: torch.Tensor
    width: int
    height: int
    near_m: float
    far_m: float

    @property
    def K_inv(self) -> torch.Tensor:
        return torch.linalg.inv(self.K)

    @property
    def R(self) -> torch.Tensor:
        return self.T_W_C[:3, :3]

    @property
    def origin(self) -> torch.Tensor:
        """Camera centre in the world, (3,) float64."""
        return self.T_W_C[:3, 3]

    @property
    def fx(self) -> float:
        return float(self.K[0, 0])

    @property
    def fy(self) -> float:
        return float(self.K[1, 1])

    def ray_matrix(self) -> torch.Tensor:
        """M (3, 3) float64 with world direction d = M @ (u, v, 1) for pixel (u, v)."""
        return self.R @ self.K_inv

    def directions(self, device="cpu", dtype=torch.float64) -> torch.Tensor:
        """World ray directions (H, W, 3) of all pixels (z-depth parametrisation)."""
        v, u = torch.meshgrid(torch.arange(self.height, dtype=torch.float64),
                              torch.arange(self.width, dtype=torch.float64), indexing="ij")
        uv1 = torch.stack([u, v, torch.ones_like(u)], -1)
        return (uv1 @ self.ray_matrix().T).to(device, dtype)

    def octants(self) -> torch.Tensor:
        """Ray-direction octant (H, W) int64 of each pixel: bit a set where d[a] < 0 (a = x, y, z)."""
        d = self.directions()
        return ((d[..., 0] < 0).long() | ((d[..., 1] < 0).long() << 1) | ((d[..., 2] < 0).long() << 2))

    def world_to_camera(self, p: torch.Tensor) -> torch.Tensor:
        """Points p (..., 3) world, any float dtype and device -> camera frame (same shape, dtype
        and device as p)."""
        R = self.R.to(p.device, p.dtype)
        t = self.origin.to(p.device, p.dtype)
        return (p - t) @ R


def make_camera(K, T_W_C, width, height, near_m: float = 0.05, far_m: float = 100.0) -> Camera:
    """Check a pinhole camera and return it as a `Camera`; raise ValueError naming what is wrong.

    K (3, 3) and T_W_C (4, 4): numpy arrays (or array-likes) or tensors on any device, of any real
    float or integer dtype (not bool or complex); the Camera holds CPU float64 copies.
    K: finite, fx, fy > 0, last row (0, 0, 1). T_W_C: finite, rigid (orthonormal rotation with
    det +1 within ROTATION_TOL, last row (0, 0, 0, 1); the rotation is replaced by the nearest
    exact one). width, height: integers in [1, MAX_IMAGE_SIDE] with at most MAX_IMAGE_PIXELS
    pixels. 0 < near_m < far_m <= MAX_FAR_M."""
    if isinstance(K, Camera):
        raise ValueError("pass K, T_W_C, width, height (not a Camera) to make_camera")
    K = _as_matrix(K, "K", (3, 3))
    if not (K[0, 0] > 0 and K[1, 1] > 0):
        raise ValueError(f"K must have positive focal lengths fx = K[0, 0], fy = K[1, 1]; got {K[0, 0]:.6g}, "
                         f"{K[1, 1]:.6g}")
    if not (torch.allclose(K[2], torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)) and K[1, 0] == 0):
        raise ValueError(f"K must be upper triangular with last row (0, 0, 1), got {K.tolist()}")
    T = _as_matrix(T_W_C, "T_W_C", (4, 4))
    if not torch.allclose(T[3], torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64), atol=1e-9):
        raise ValueError(f"T_W_C must have last row (0, 0, 0, 1), got {T[3].tolist()}")
    R = T[:3, :3]
    ortho = float((R.T @ R - torch.eye(3, dtype=torch.float64)).abs().max())
    det = float(torch.linalg.det(R))
    if ortho > ROTATION_TOL or abs(det - 1.0) > ROTATION_TOL:
        raise ValueError(f"T_W_C must be a rigid transform: its rotation is not orthonormal with det +1 "
                         f"(max |R^T R - I| = {ortho:.3g}, det = {det:.6g}); scale or shear is not allowed")
    U, _, Vh = torch.linalg.svd(R)
    T = T.clone()
    T[:3, :3] = U @ Vh                       # the nearest rotation (polar factor)
    w = _as_size(width, "width")
    h = _as_size(height, "height")
    if w * h > MAX_IMAGE_PIXELS:
        raise ValueError(f"image of {w} x {h} pixels is too large (at most {MAX_IMAGE_PIXELS} pixels)")
    try:
        near, far = float(near_m), float(far_m)
    except (TypeError, ValueError):
        raise ValueError(f"near_m and far_m must be numbers, got {near_m!r}, {far_m!r}") from None
    if not (math.isfinite(near) and math.isfinite(far) and 0 < near < far <= MAX_FAR_M):
        raise ValueError(f"need finite 0 < near_m < far_m <= {MAX_FAR_M:g}, got near_m={near}, far_m={far}")
    return Camera(K, T, w, h, near, far)
