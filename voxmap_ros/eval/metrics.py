"""Reconstruction metrics against ground truth.

Mesh metrics follow the usual surface-reconstruction protocol (e.g. Tanks and Temples):
points are sampled uniformly by area on each mesh (seeded), and every sample's distance to the
*other* mesh is the exact point-to-triangle distance from Open3D's
`RaycastingScene.compute_distance` (a BVH query, no sampling error on the target side). It
computes in float32: errors are micrometres on well-shaped triangles (marching-cubes output,
the sim scenes) but can reach a millimetre on metre-long sliver triangles.
    accuracy_m      mean distance, predicted samples -> ground-truth surface
    completeness_m  mean distance, ground-truth samples -> predicted surface
    chamfer_m       (accuracy_m + completeness_m) / 2
    precision       fraction of predicted samples closer than tau_m to the ground truth
    recall          fraction of ground-truth samples closer than tau_m to the prediction
    fscore          harmonic mean of precision and recall
plus tau_m, n_samples (per mesh) and n_pred_triangles. "Closer than" is the strict distance <
tau_m on the float32 distance: a surface exactly tau_m away falls on either side by rounding.
Distances are float32 too, so their error grows with the distance from the origin (~1 mm at
10 km): shift georeferenced meshes near the origin first. Duplicated triangles are sampled as
often as they appear (the area of a triangle soup).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import open3d as o3d

from voxmap_ros.types import MeshData


def load_mesh(mesh) -> MeshData:
    """A `MeshData` from a MeshData, a path to a mesh file Open3D reads (.ply, .obj, ...), or
    any object with `vertices` (V, 3) and `triangles` (T, 3) arrays (e.g. a sim Scene) and
    optionally `colors` (V, 3): numeric arrays on the host (numpy or CPU tensors), cast to float32,
    int64 and uint8."""
    if isinstance(mesh, (str, Path)):
        p = Path(mesh)
        if not p.is_file():
            raise ValueError(f"mesh file {p} does not exist")
        m = o3d.io.read_triangle_mesh(str(p))
        v = np.asarray(m.vertices, np.float32)
        if len(v) == 0 and not _declares_no_vertices(p):
            raise ValueError(f"could not read a mesh from {p} (not a mesh file Open3D reads, or corrupted)")
        cols = (np.asarray(m.vertex_colors) * 255).round().astype(np.uint8) if m.has_vertex_colors() else None
        return _checked_mesh(v, np.asarray(m.triangles, np.int64), cols, str(p))
    if hasattr(mesh, "vertices") and hasattr(mesh, "triangles"):
        v = np.asarray(mesh.vertices, np.float32).reshape(-1, 3)
        t = np.asarray(mesh.triangles, np.int64).reshape(-1, 3)
        cols = getattr(mesh, "colors", None)
        return _checked_mesh(v, t, None if cols is None else np.asarray(cols), "mesh")
    raise ValueError(f"expected a MeshData, a mesh file path or an object with vertices/triangles, "
                     f"got {type(mesh).__name__}")


def _checked_mesh(v: np.ndarray, t: np.ndarray, cols: np.ndarray | None, what: str) -> MeshData:
    if len(t) and (t.min() < 0 or t.max() >= len(v)):
        raise ValueError(f"{what}: triangle indices must lie in [0, {len(v)}), got [{t.min()}, {t.max()}]")
    if cols is None or len(cols) != len(v):
        cols = np.zeros((len(v), 3), np.uint8)
    return MeshData(v, t, np.asarray(cols, np.uint8))


def _declares_no_vertices(path: Path) -> bool:
    """True for a PLY file whose header says 'element vertex 0' (an empty mesh, e.g. of an empty map)."""
    with open(path, "rb") as f:
        head = f.read(4096)
    if not head.startswith(b"ply"):
        return False
    header = head.split(b"end_header")[0].decode("ascii", "replace").split()
    return any(header[i:i + 3] == ["element", "vertex", "0"] for i in range(len(header)))


def sample_surface(mesh: MeshData, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 3) float64 numpy points uniform by area on the triangles of `mesh` (vertices (V, 3)
    any float dtype, triangles (T, 3) integer; numpy, host). Returns (0, 3) for a mesh with no area."""
    v = np.asarray(mesh.vertices, np.float64)
    tri = v[np.asarray(mesh.triangles, np.int64)]                   # (T, 3, 3)
    if len(tri) == 0 or n <= 0:
        return np.zeros((0, 3))
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    area[~np.isfinite(area)] = 0.0          # a triangle with a non-finite vertex has no samples
    total = area.sum()
    if not np.isfinite(total) or total <= 0:
        return np.zeros((0, 3))
    idx = rng.choice(len(tri), size=n, p=area / total)
    # Folding the unit square onto the triangle keeps the samples uniform.
    r1, r2 = rng.random(n), rng.random(n)
    flip = r1 + r2 > 1
    r1[flip], r2[flip] = 1 - r1[flip], 1 - r2[flip]
    t = tri[idx]
    return t[:, 0] + r1[:, None] * (t[:, 1] - t[:, 0]) + r2[:, None] * (t[:, 2] - t[:, 0])


def point_to_mesh_distance(points: np.ndarray, mesh: MeshData) -> np.ndarray:
    """(N,) float64 numpy exact distances from points (N, 3) (any numeric dtype, host; queried
    in float32) to the closest triangle of `mesh` (inf for every point when the mesh has no
    triangles)."""
    pts = np.asarray(points, np.float32).reshape(-1, 3)
    if len(mesh.triangles) == 0:
        return np.full(len(pts), np.inf)
    if len(pts) == 0:
        return np.zeros(0)
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(np.asarray(mesh.vertices, np.float32)),
                        o3d.core.Tensor(np.asarray(mesh.triangles, np.uint32)))
    return scene.compute_distance(o3d.core.Tensor(pts)).numpy().astype(np.float64)


def mesh_metrics(pred, gt, tau_m: float, n_samples: int = 200_000, seed: int = 0) -> dict:
    """Accuracy, completeness, Chamfer (metres) and precision / recall / F-score at `tau_m`
    between a predicted and a ground-truth mesh (MeshData or mesh file path; see module doc).

    An empty (or zero-area) prediction gives accuracy_m = completeness_m = chamfer_m = inf (null
    in `voxmap eval --json`) and precision = recall = fscore = 0. An empty ground truth raises
    ValueError.
    """
    if not tau_m > 0:
        raise ValueError(f"tau_m must be > 0 metres, got {tau_m}")
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    pred, gt = load_mesh(pred), load_mesh(gt)
    rng = np.random.default_rng(seed)
    gt_pts = sample_surface(gt, n_samples, rng)
    if len(gt_pts) == 0:
        raise ValueError("ground-truth mesh is empty (no triangles with area); expected a surface")
    pred_pts = sample_surface(pred, n_samples, rng)
    out = {"tau_m": float(tau_m), "n_samples": int(n_samples), "n_pred_triangles": int(len(pred.triangles))}
    if len(pred_pts) == 0:
        return {**out, "accuracy_m": float("inf"), "completeness_m": float("inf"), "chamfer_m": float("inf"),
                "precision": 0.0, "recall": 0.0, "fscore": 0.0}
    d_pred_gt = point_to_mesh_distance(pred_pts, gt)
    d_gt_pred = point_to_mesh_distance(gt_pts, pred)
    precision = float(np.mean(d_pred_gt < tau_m))
    recall = float(np.mean(d_gt_pred < tau_m))
    fscore = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    acc, comp = float(d_pred_gt.mean()), float(d_gt_pred.mean())
    return {**out, "accuracy_m": acc, "completeness_m": comp, "chamfer_m": (acc + comp) / 2,
            "precision": precision, "recall": recall, "fscore": fscore}


def depth_errors(pred_depth: np.ndarray, gt_depth: np.ndarray) -> dict:
    """Absolute depth errors over pixels valid (finite and > 0) in both images.

    pred_depth, gt_depth: (H, W) float metres (any float dtype), same shape, numpy (host).
    Returns median_abs_m, mean_abs_m, rmse_m (nan when no pixel is valid in both), n_valid and
    valid_fraction (of all pixels).
    """
    p, g = np.asarray(pred_depth), np.asarray(gt_depth)
    if p.shape != g.shape or p.ndim != 2:
        raise ValueError(f"pred_depth and gt_depth must be (H, W) of the same shape, got {p.shape} and {g.shape}")
    if not (np.issubdtype(p.dtype, np.floating) and np.issubdtype(g.dtype, np.floating)):
        raise ValueError(f"depths must be float metres, got {p.dtype} and {g.dtype}; divide uint16 depth by "
                         "its depth_scale first")
    valid = np.isfinite(p) & np.isfinite(g) & (p > 0) & (g > 0)
    err = np.abs(p[valid].astype(np.float64) - g[valid])
    nan = float("nan")
    return {"median_abs_m": float(np.median(err)) if err.size else nan,
            "mean_abs_m": float(err.mean()) if err.size else nan,
            "rmse_m": float(np.sqrt(np.mean(err ** 2))) if err.size else nan,
            "n_valid": int(valid.sum()), "valid_fraction": float(valid.mean()) if valid.size else 0.0}
