"""Files a mapping run leaves behind: mesh PLY, map file, map_server PGM+YAML, PNG previews."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .core import occupancy
from .types import Grid2D, MeshData


def write_ply(mesh: MeshData, path: str | Path) -> Path:
    """Binary little-endian PLY with per-vertex colour."""
    path = Path(path)
    v = np.ascontiguousarray(mesh.vertices, dtype="<f4")
    c = np.ascontiguousarray(mesh.colors, dtype=np.uint8)
    t = np.ascontiguousarray(mesh.triangles, dtype="<i4")
    vert = np.empty(len(v), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                                   ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    if len(v):
        vert["x"], vert["y"], vert["z"] = v[:, 0], v[:, 1], v[:, 2]
        vert["red"], vert["green"], vert["blue"] = c[:, 0], c[:, 1], c[:, 2]
    face = np.empty(len(t), dtype=[("n", "u1"), ("i", "<i4", (3,))])
    face["n"] = 3
    face["i"] = t
    header = ("ply\nformat binary_little_endian 1.0\ncomment voxmap_ros\n"
              f"element vertex {len(v)}\nproperty float x\nproperty float y\nproperty float z\n"
              "property uchar red\nproperty uchar green\nproperty uchar blue\n"
              f"element face {len(t)}\nproperty list uchar int vertex_indices\nend_header\n")
    with open(path, "wb") as f:
        f.write(header.encode())
        f.write(vert.tobytes())
        f.write(face.tobytes())
    return path


def grid_preview(grid: Grid2D, path: str | Path, max_side_px: int = 1200) -> Path:
    """Top-down PNG of a 2D grid (white free, black occupied, grey unknown; north = +y up)."""
    import cv2
    img = np.full(grid.data.shape, 128, np.uint8)
    img[grid.data == occupancy.FREE] = 255
    img[grid.data == occupancy.OCCUPIED] = 0
    img = img[::-1]
    scale = max(1, int(max_side_px // max(img.shape)))
    img = np.kron(img, np.ones((scale, scale), np.uint8)) if scale > 1 else img
    cv2.imwrite(str(path), img)
    return Path(path)


def mesh_preview(mesh: MeshData, path: str | Path, width: int = 960, height: int = 720) -> Path:
    """PNG of the mesh seen obliquely from above, ray cast on the CPU (no display needed):
    vertex colours times a head-light Lambert term."""
    import cv2
    import open3d as o3d
    img = np.full((height, width, 3), 40, np.uint8)
    if len(mesh.triangles) == 0:
        cv2.imwrite(str(path), img)
        return Path(path)
    v = mesh.vertices.astype(np.float32)
    lo, hi = v.min(0), v.max(0)
    centre, extent = (lo + hi) / 2, float(np.linalg.norm(hi - lo))
    eye = centre + np.array([-0.6, -0.8, 0.9]) * extent
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(v), o3d.core.Tensor(mesh.triangles.astype(np.uint32)))
    rays = o3d.t.geometry.RaycastingScene.create_rays_pinhole(
        fov_deg=50, center=centre.tolist(), eye=eye.tolist(), up=[0, 0, 1], width_px=width, height_px=height)
    ans = scene.cast_rays(rays)
    hit = np.isfinite(ans["t_hit"].numpy())
    tri = ans["primitive_ids"].numpy()[hit].astype(np.int64)
    uv = ans["primitive_uvs"].numpy()[hit]
    n = ans["primitive_normals"].numpy()[hit]
    d = rays.numpy()[..., 3:][hit]
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    shade = 0.25 + 0.75 * np.abs((n * d).sum(1))
    tv = mesh.triangles[tri]
    c = mesh.colors.astype(np.float32)
    col = (c[tv[:, 0]] * (1 - uv[:, :1] - uv[:, 1:]) + c[tv[:, 1]] * uv[:, :1] + c[tv[:, 2]] * uv[:, 1:])
    if not col.any():
        col[:] = 200.0                                # an uncoloured (LiDAR) mesh: plain grey
    img[hit] = np.clip(col * shade[:, None], 0, 255).astype(np.uint8)
    cv2.imwrite(str(path), img[..., ::-1])
    return Path(path)


def write_outputs(mapper, out_dir: str | Path, stem: str = "") -> dict:
    """Everything a run produces, from a Mapper. Returns {name: path}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    mesh = mapper.extract_mesh()
    grid = mapper.occupancy_grid()
    paths = {
        "map": mapper.save(out / f"{stem}map.npz"),
        "mesh": write_ply(mesh, out / f"{stem}mesh.ply"),
        "occupancy_yaml": occupancy.save_map_server(grid, out / f"{stem}occupancy.pgm"),
        "occupancy_pgm": out / f"{stem}occupancy.pgm",
        "occupancy_png": grid_preview(grid, out / f"{stem}occupancy.png"),
        "mesh_png": mesh_preview(mesh, out / f"{stem}mesh.png"),
    }
    return {k: str(v) for k, v in paths.items()}
