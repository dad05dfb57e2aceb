"""Files a mapping run leaves behind: mesh PLY, map file, map_server PGM+YAML, PNG previews, and
rendered views of the map (depth + colour from any pinhole camera, via voxmap_ros.render)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .core import io as mapio
from .core import occupancy
from .core.octree import spheres_in_frustum
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
    # Seen from above, a ceiling hides the room: leave out triangles wholly in the top fifth.
    tris = mesh.triangles
    if len(tris):
        keep = v[tris][:, :, 2].min(1) < lo[2] + 0.8 * (hi[2] - lo[2])
        tris = tris[keep] if keep.any() else tris
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(v), o3d.core.Tensor(tris.astype(np.uint32)))
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
    tv = tris[tri]
    c = mesh.colors.astype(np.float32)
    c[~c.any(1)] = 200.0                              # vertices without colour (LiDAR only): plain grey
    col = (c[tv[:, 0]] * (1 - uv[:, :1] - uv[:, 1:]) + c[tv[:, 1]] * uv[:, :1] + c[tv[:, 2]] * uv[:, 1:])
    img[hit] = np.clip(col * shade[:, None], 0, 255).astype(np.uint8)
    cv2.imwrite(str(path), img[..., ::-1])
    return Path(path)


@dataclass
class CapturedOutputs:
    """What a run's outputs need from the map, copied: the welded mesh, the 2D grid and what the
    map file holds."""
    mesh: MeshData
    grid: Grid2D
    map_file: mapio.MapFileSnapshot


def capture_outputs(mapper) -> CapturedOutputs:
    """Read what write_captured writes from a Mapper; the only step that needs the map (a node
    holds its map lock for this, not for the compression and file writing)."""
    return CapturedOutputs(mapper.extract_mesh(), mapper.occupancy_grid(), mapper.snapshot())


def write_captured(cap: CapturedOutputs, out_dir: str | Path, stem: str = "") -> dict:
    """Write map file, mesh PLY, occupancy PGM + YAML + PNG and a mesh PNG under out_dir.
    Returns {name: path}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "map": mapio.write_snapshot(cap.map_file, out / f"{stem}map.npz"),
        "mesh": write_ply(cap.mesh, out / f"{stem}mesh.ply"),
        "occupancy_yaml": occupancy.save_map_server(cap.grid, out / f"{stem}occupancy.pgm"),
        "occupancy_pgm": out / f"{stem}occupancy.pgm",
        "occupancy_png": grid_preview(cap.grid, out / f"{stem}occupancy.png"),
        "mesh_png": mesh_preview(cap.mesh, out / f"{stem}mesh.png"),
    }
    return {k: str(v) for k, v in paths.items()}


def write_outputs(mapper, out_dir: str | Path, stem: str = "") -> dict:
    """Everything a run produces, from a Mapper. Returns {name: path}."""
    return write_captured(capture_outputs(mapper), out_dir, stem)


# ============================================================================ rendered views
# Rendering a view of the map takes two steps so that a front end can keep its map lock short:
# `map_snapshot` copies the TSDF of the bricks the camera can see (call it with the map to
# yourself; ~1 ms for a room), `render_snapshot` builds the renderable cells from the copy and rasterizes
# them (no access to the map). `render_view` does both.
DEPTH_PNG_SCALE = 1000.0           # rendered depth PNGs: uint16 millimetres, 0 = nothing drawn


@dataclass
class View:
    """A pinhole camera: K (3, 3), T_W_C (4, 4) camera -> map with optical axes (z forward, x right,
    y down), image width x height in pixels (pixel centres at integer coordinates)."""
    K: np.ndarray
    T_W_C: np.ndarray
    width: int
    height: int


@dataclass
class RenderedView:
    """A rendered view: depth_m (H, W) float32 z-depth, NaN where nothing was drawn (opacity below
    render.min_alpha); rgb (H, W, 3) uint8 surface colour, black there; alpha (H, W) float32
    opacity; view the camera; cells drawn; backend that drew them; ms the time it took."""
    depth_m: np.ndarray
    rgb: np.ndarray
    alpha: np.ndarray
    view: View
    cells: int = 0
    backend: str = ""
    ms: float = 0.0

    @property
    def valid(self) -> np.ndarray:
        return np.isfinite(self.depth_m)


@dataclass
class MapSnapshot:
    """The TSDF of some bricks, copied out of a map (see map_snapshot): tensors on the map's
    device, in its dtypes (tsdf / weight float16, color uint8 for the core attributes)."""
    coords: torch.Tensor               # (B, 3) int32 brick coordinates
    attrs: dict                        # tsdf / weight / color rows (B, 512[, 3]) of those bricks
    voxel_size_m: float
    levels: int
    trunc_m: float
    min_weight: float


def scaled_view(K, width: int, height: int, T_W_C, max_width: int, max_height: int) -> View:
    """The camera (K (3, 3), width x height; pose T_W_C (4, 4)) scaled down to fit max_width x
    max_height (aspect kept; never scaled up). K and T_W_C: numeric array-likes on the host; the
    View holds float64 numpy copies. Pixel centres stay at integer coordinates: u' = s (u + 1/2) - 1/2."""
    K = np.asarray(K, np.float64)
    s = min(1.0, max_width / width, max_height / height)
    if s >= 1.0:
        return View(K.copy(), np.asarray(T_W_C, np.float64).copy(), int(width), int(height))
    w, h = max(1, int(round(width * s))), max(1, int(round(height * s)))
    sx, sy = w / width, h / height
    K2 = K.copy()
    K2[0, 0], K2[0, 1], K2[0, 2] = K[0, 0] * sx, K[0, 1] * sx, sx * (K[0, 2] + 0.5) - 0.5
    K2[1, 1], K2[1, 2] = K[1, 1] * sy, sy * (K[1, 2] + 0.5) - 0.5
    return View(K2, np.asarray(T_W_C, np.float64).copy(), w, h)


def fixed_view(render_cfg) -> View:
    """The fixed viewpoint of a RenderConfig: fixed_pose [x, y, z, roll, pitch, yaw] of the optical
    frame in the map, fixed_hfov_deg, width x height, square pixels, centred principal point."""
    from .poses import static_extrinsic
    w, h = int(render_cfg.width), int(render_cfg.height)
    f = (w / 2) / math.tan(math.radians(render_cfg.fixed_hfov_deg) / 2)
    K = np.array([[f, 0.0, (w - 1) / 2], [0.0, f, (h - 1) / 2], [0.0, 0.0, 1.0]])
    pose = list(render_cfg.fixed_pose)
    return View(K, static_extrinsic(pose[:3], pose[3:]), w, h)


def _view_bricks(octree, view: View, near_m: float, far_m: float) -> torch.Tensor:
    """Slots of the bricks whose cells may show in the view, and of the +x/+y/+z neighbours whose
    voxels those cells read. The sphere test is the rasterizer's (TsdfField.brick_levels: brick
    cells span voxel centres, half a voxel up from the brick) with one voxel of margin."""
    from .core import morton
    from .core.octree import BRICK
    slots = octree.alive_slots()
    if slots.numel() == 0:
        return slots
    v = octree.voxel_size_m
    dev = octree.device
    T = torch.as_tensor(view.T_W_C, dtype=torch.float64, device=dev)
    centre = (octree.brick_coord[slots].double() * BRICK + (BRICK / 2 + 0.5)) * v
    c = (centre - T[:3, 3]) @ T[:3, :3]                      # world -> camera
    r = math.sqrt(3) * BRICK * v / 2 + v
    inside = spheres_in_frustum(c, r, view.K, view.width, view.height, near_m, far_m)
    seen = slots[inside]
    if seen.numel() == 0:
        return seen
    coords = octree.brick_coord[seen].long()
    nb = octree.lookup_bricks((coords[:, None, :] + morton.CHILD_OFFSETS.to(dev)[None]).reshape(-1, 3))
    return torch.unique(torch.cat([seen, nb[nb >= 0]]))


def map_snapshot(mapper, view: View, near_m: float, far_m: float) -> MapSnapshot:
    """Copy what rendering `view` needs out of a Mapper's map: the TSDF, weights and colours of the
    bricks in the view's frustum (and their +x/+y/+z neighbours). Reads the map: call it with the
    map to yourself (the node holds its map lock); render_snapshot then needs no map access."""
    o = mapper.octree
    slots = _view_bricks(o, view, near_m, far_m)
    cfg = mapper.config
    return MapSnapshot(coords=o.brick_coord[slots].clone(),
                       attrs={k: o.attrs[k][slots].clone() for k in ("tsdf", "weight", "color")},
                       voxel_size_m=float(o.voxel_size_m), levels=int(o.levels),
                       trunc_m=float(cfg.tsdf.trunc_vox) * float(o.voxel_size_m),
                       min_weight=float(cfg.tsdf.min_weight_mesh))


def render_snapshot(snap: MapSnapshot, view: View, render_cfg) -> RenderedView:
    """Rasterize a MapSnapshot from `view` (TsdfField cells, NeuS SDF -> density, default sharpness).
    render_cfg: a RenderConfig (near_m, far_m, min_alpha, lod_px, backend)."""
    import time

    from .core.octree import SparseVoxelOctree
    from .render import TsdfField, make_camera, render_map
    from .render.voxels import DEFAULT_SHARPNESS_VOX
    t0 = time.perf_counter()
    w, h = int(view.width), int(view.height)
    make_camera(view.K, view.T_W_C, w, h, render_cfg.near_m, render_cfg.far_m)     # ValueError on a bad camera
    empty = RenderedView(np.full((h, w), np.nan, np.float32), np.zeros((h, w, 3), np.uint8),
                         np.zeros((h, w), np.float32), view)
    n = int(snap.coords.shape[0])
    if n == 0:
        empty.ms = (time.perf_counter() - t0) * 1000.0
        return empty
    dev = snap.coords.device
    octree = SparseVoxelOctree(snap.voxel_size_m, snap.levels, dev, initial_bricks=max(16, n))
    slots, _ = octree.allocate_bricks(snap.coords)
    for k, t in snap.attrs.items():
        octree.attrs[k][slots] = t
    field = TsdfField(octree, snap.trunc_m, DEFAULT_SHARPNESS_VOX / snap.voxel_size_m, min_weight=snap.min_weight)
    if field.num_cells == 0:
        empty.ms = (time.perf_counter() - t0) * 1000.0
        return empty
    with torch.no_grad():
        out = render_map(field, view.K, view.T_W_C, w, h, near_m=render_cfg.near_m, far_m=render_cfg.far_m,
                         lod_px=render_cfg.lod_px, backend=render_cfg.backend)
    alpha = out.alpha.detach().float().cpu().numpy()
    ok = alpha >= render_cfg.min_alpha
    depth = np.where(ok, out.depth.detach().float().cpu().numpy(), np.nan).astype(np.float32)
    col = out.color.detach().float().cpu().numpy() / np.maximum(alpha, 1e-6)[..., None]   # un-premultiply
    rgb = np.where(ok[..., None], np.clip(np.round(col * 255.0), 0, 255), 0).astype(np.uint8)
    return RenderedView(depth, rgb, alpha, view, cells=field.num_cells, backend=out.backend,
                        ms=(time.perf_counter() - t0) * 1000.0)


def render_view(mapper, view: View, render_cfg) -> RenderedView:
    """Render a Mapper's map from `view` (map_snapshot + render_snapshot)."""
    return render_snapshot(map_snapshot(mapper, view, render_cfg.near_m, render_cfg.far_m), view, render_cfg)


def depth_to_png_mm(depth_m: np.ndarray) -> np.ndarray:
    """Depth in metres (NaN / <= 0 = none), numpy (host) of any shape and real dtype -> uint16
    millimetres of the same shape, 0 = none (65535 never written)."""
    d = np.asarray(depth_m, np.float64) * DEPTH_PNG_SCALE
    ok = np.isfinite(d) & (d > 0) & (d <= 65534)
    return np.where(ok, np.round(np.where(ok, d, 0)), 0).astype(np.uint16)


def write_rendered(rv: RenderedView, out_dir: str | Path, stem: str) -> dict:
    """Write `<stem>_depth.png` (uint16 mm, 0 = nothing drawn) and `<stem>_color.png` (RGB)."""
    import cv2
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"depth": out / f"{stem}_depth.png", "color": out / f"{stem}_color.png"}
    for key, img in (("depth", depth_to_png_mm(rv.depth_m)), ("color", rv.rgb[..., ::-1])):
        if not cv2.imwrite(str(paths[key]), np.ascontiguousarray(img)):
            raise OSError(f"could not write {paths[key]}")
    return {k: str(v) for k, v in paths.items()}


def depth_colormap(depth_m: np.ndarray, max_m: float | None = None) -> np.ndarray:
    """Depth (H, W) metres, numpy (host) of any real dtype (NaN / <= 0 = none) -> (H, W, 3) uint8
    RGB (turbo, near blue, far red; black = none)."""
    import cv2
    d = np.asarray(depth_m, np.float64)
    ok = np.isfinite(d) & (d > 0)
    top = max_m if max_m else (float(d[ok].max()) if ok.any() else 1.0)
    u8 = np.clip(np.where(ok, d, 0) / max(top, 1e-9) * 255.0, 0, 255).astype(np.uint8)
    rgb = cv2.applyColorMap(u8, cv2.COLORMAP_TURBO)[..., ::-1]
    return np.where(ok[..., None], rgb, 0).astype(np.uint8)


def compare_picture(input_rgb: np.ndarray | None, input_depth_m: np.ndarray, rv: RenderedView,
                    path: str | Path, err_max_m: float) -> Path:
    """Side by side: input colour (or input depth, colour-mapped, without colour) | rendered colour |
    |rendered - input depth| (inferno, 0 .. err_max_m; grey where either depth is missing), each
    panel under a caption. input_rgb (H, W, 3) uint8 or None, input_depth_m (H, W) float metres
    (any real dtype), numpy (host), the size of rv's images."""
    import cv2
    h, w = rv.rgb.shape[:2]
    if input_rgb is not None:
        input_rgb = np.asarray(input_rgb)
        if input_rgb.dtype != np.uint8 or input_rgb.shape != (h, w, 3):   # a float image would wrap on the cast
            raise ValueError(f"input_rgb must be ({h}, {w}, 3) uint8, got {input_rgb.shape} {input_rgb.dtype}")
    d_in = np.asarray(input_depth_m, np.float64)
    if d_in.shape != (h, w):
        raise ValueError(f"input_depth_m must be ({h}, {w}), got {d_in.shape}")
    both = np.isfinite(d_in) & (d_in > 0) & rv.valid
    err = np.abs(np.where(both, rv.depth_m, 0) - np.where(both, d_in, 0))
    u8 = np.clip(err / err_max_m * 255.0, 0, 255).astype(np.uint8)
    err_rgb = cv2.applyColorMap(u8, cv2.COLORMAP_INFERNO)[..., ::-1]
    err_rgb = np.where(both[..., None], err_rgb, 96).astype(np.uint8)
    if input_rgb is not None:
        left, left_name = input_rgb, "input"
    else:
        left, left_name = depth_colormap(d_in), "input depth"
    panels = [(left, left_name), (rv.rgb, "rendered"), (err_rgb, f"|depth err| 0-{err_max_m * 100:.0f} cm")]
    bar = 18
    scale = 0.4 if w < 400 else 0.6
    cols = []
    for img, caption in panels:
        tile = np.full((h + bar, w, 3), 32, np.uint8)
        tile[bar:] = img
        cv2.putText(tile, caption, (4, bar - 5), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
        cols.append(tile)
    sep = np.full((h + bar, 2, 3), 255, np.uint8)
    pic = np.concatenate([cols[0], sep, cols[1], sep, cols[2]], 1)
    if not cv2.imwrite(str(path), pic[..., ::-1]):
        raise OSError(f"could not write {path}")
    return Path(path)
