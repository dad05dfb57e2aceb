"""Procedural, seeded triangle-mesh scenes with per-triangle semantic labels and object ids.

Every scene is built from a few primitives (`plane_mesh`, `box_mesh`, `cylinder_mesh`,
`sphere_mesh`), each returning a one-object `Scene`; `Scene.merge` concatenates them. The world
frame is z up, metres. Planar surfaces are split into tiles with their own vertices so that a
checker pattern stays crisp under per-vertex colours (colour integration is then testable), and
triangle counts stay small (tens of thousands).

`make_scene("indoor", seed)` builds a 6 x 5 x 2.6 m room; `make_scene("outdoor", seed)` a
40 x 20 m street. The same (kind, seed) always gives identical arrays.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from voxmap_ros.types import MeshData

# One label table for all scenes, so a label id means the same class everywhere.
LABEL_NAMES: dict[int, str] = {
    0: "unlabelled", 1: "floor", 2: "wall", 3: "ceiling", 4: "furniture", 5: "object",
    6: "thin_structure", 7: "road", 8: "sidewalk", 9: "building", 10: "pole", 11: "car",
}
LABEL_IDS: dict[str, int] = {name: i for i, name in LABEL_NAMES.items()}

ROOM_SIZE_M = (6.0, 5.0, 2.6)       # x, y, z extent of the indoor room; floor at z = 0
STREET_SIZE_M = (40.0, 20.0)        # x (along the street), y extent of the outdoor scene
ROAD_HALF_WIDTH_M = 4.0
SIDEWALK_WIDTH_M = 3.0
SIDEWALK_HEIGHT_M = 0.15


@dataclass(eq=False)  # identity hash, so sensors can cache a ray-casting structure per scene
class Scene:
    """A labelled triangle mesh in the world frame (metres, z up).

    vertices (V, 3) float32; triangles (T, 3) int64; colors (V, 3) uint8 RGB per vertex;
    labels (T,) int32 semantic class per triangle (keys of `label_names`); object_ids (T,) int32
    one id per object instance (keys of `object_names`); bounds (2, 3) float64 [min; max].
    """
    vertices: np.ndarray
    triangles: np.ndarray
    colors: np.ndarray
    labels: np.ndarray
    label_names: dict[int, str]
    object_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    object_names: dict[int, str] = field(default_factory=dict)
    kind: str = "custom"

    def __post_init__(self) -> None:
        self.vertices = np.ascontiguousarray(self.vertices, np.float32).reshape(-1, 3)
        self.triangles = np.ascontiguousarray(self.triangles, np.int64).reshape(-1, 3)
        self.colors = np.ascontiguousarray(self.colors, np.uint8).reshape(-1, 3)
        self.labels = np.ascontiguousarray(self.labels, np.int32).reshape(-1)
        if len(self.object_ids) == 0 and len(self.triangles) > 0:
            self.object_ids = np.zeros(len(self.triangles), np.int32)
        self.object_ids = np.ascontiguousarray(self.object_ids, np.int32).reshape(-1)
        n_v, n_t = len(self.vertices), len(self.triangles)
        if len(self.colors) != n_v:
            raise ValueError(f"colors has {len(self.colors)} rows, expected one per vertex ({n_v})")
        if len(self.labels) != n_t or len(self.object_ids) != n_t:
            raise ValueError(f"labels ({len(self.labels)}) and object_ids ({len(self.object_ids)}) "
                             f"must have one entry per triangle ({n_t})")
        if n_t and (self.triangles.min() < 0 or self.triangles.max() >= n_v):
            raise ValueError(f"triangle indices must lie in [0, {n_v}), got "
                             f"[{self.triangles.min()}, {self.triangles.max()}]")

    @property
    def bounds(self) -> np.ndarray:
        """(2, 3) float64: axis-aligned [min; max] corners of the vertices (zeros when empty)."""
        if len(self.vertices) == 0:
            return np.zeros((2, 3))
        return np.stack([self.vertices.min(0), self.vertices.max(0)]).astype(np.float64)

    @property
    def triangle_colors(self) -> np.ndarray:
        """(T, 3) uint8: mean colour of each triangle's three vertices."""
        return self.colors[self.triangles].mean(1).round().astype(np.uint8)

    def __len__(self) -> int:
        return len(self.triangles)

    @staticmethod
    def merge(parts: list["Scene"], kind: str | None = None) -> "Scene":
        """Concatenate scenes into one. Object ids are kept as they are: parts that share an id
        are one object (a box's six faces, a car's body and cabin)."""
        parts = [p for p in parts if len(p.triangles)]
        if not parts:
            return Scene(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0), {},
                         kind=kind or "custom")
        offsets = np.cumsum([0] + [len(p.vertices) for p in parts[:-1]])
        object_names: dict[int, str] = {}
        for p in parts:
            object_names.update(p.object_names)
        label_names: dict[int, str] = {}
        for p in parts:
            label_names.update(p.label_names)
        return Scene(
            vertices=np.concatenate([p.vertices for p in parts]),
            triangles=np.concatenate([p.triangles + o for p, o in zip(parts, offsets)]),
            colors=np.concatenate([p.colors for p in parts]),
            labels=np.concatenate([p.labels for p in parts]),
            label_names=dict(sorted(label_names.items())),
            object_ids=np.concatenate([p.object_ids for p in parts]),
            object_names=dict(sorted(object_names.items())),
            kind=kind or parts[0].kind,
        )

    def select(self, triangle_mask: np.ndarray) -> "Scene":
        """Sub-scene of the triangles where `triangle_mask` (T,) bool is True; unused vertices
        are dropped and indices compacted."""
        triangle_mask = np.asarray(triangle_mask, bool)
        if triangle_mask.shape != (len(self.triangles),):
            raise ValueError(f"triangle_mask must have shape ({len(self.triangles)},), "
                             f"got {triangle_mask.shape}")
        tris = self.triangles[triangle_mask]
        used = np.unique(tris)
        new_index = np.full(len(self.vertices), -1, np.int64)
        new_index[used] = np.arange(len(used))
        object_ids = self.object_ids[triangle_mask]
        kept = set(np.unique(object_ids).tolist())
        return Scene(self.vertices[used], new_index[tris], self.colors[used],
                     self.labels[triangle_mask], dict(self.label_names), object_ids,
                     {i: n for i, n in self.object_names.items() if i in kept}, self.kind)

    def without_label(self, label: int) -> "Scene":
        """The scene with every triangle of semantic class `label` removed."""
        return self.select(self.labels != label)

    def without_object(self, obj: int | str) -> "Scene":
        """The scene with one object instance removed, given by id or by name (see
        `object_names`). Raises ValueError if no such object exists."""
        if isinstance(obj, str):
            ids = [i for i, n in self.object_names.items() if n == obj]
            if not ids:
                raise ValueError(f"no object named {obj!r}; objects are {sorted(self.object_names.values())}")
            obj = ids[0]
        if obj not in self.object_names and not np.any(self.object_ids == obj):
            raise ValueError(f"no object with id {obj}; ids are {sorted(self.object_names)}")
        return self.select(self.object_ids != obj)

    def object_bounds(self, obj: int | str) -> np.ndarray:
        """(2, 3) float64 [min; max] corners of one object's vertices, by id or name."""
        if isinstance(obj, str):
            ids = [i for i, n in self.object_names.items() if n == obj]
            if not ids:
                raise ValueError(f"no object named {obj!r}; objects are {sorted(self.object_names.values())}")
            obj = ids[0]
        sub = self.select(self.object_ids == obj)
        if len(sub) == 0:
            raise ValueError(f"no object with id {obj}; ids are {sorted(self.object_names)}")
        return sub.bounds

    def to_mesh_data(self) -> MeshData:
        """The geometry and vertex colours as a `MeshData` (labels dropped)."""
        return MeshData(self.vertices.copy(), self.triangles.copy(), self.colors.copy())


# ---------------------------------------------------------------------------------------------
# Primitives. Each returns a one-object Scene; `obj_id` / `name` identify the instance.

def _one_object(vertices, triangles, colors, label: int, obj_id: int, name: str) -> Scene:
    n_t = len(triangles)
    return Scene(vertices, triangles, colors, np.full(n_t, label, np.int32),
                 {label: LABEL_NAMES.get(label, f"label_{label}")},
                 np.full(n_t, obj_id, np.int32), {obj_id: name or f"object_{obj_id}"})


def _rgb(color) -> np.ndarray:
    c = np.asarray(color)
    if c.shape != (3,):
        raise ValueError(f"a colour must be 3 values (R, G, B) in 0..255, got shape {c.shape}")
    return np.clip(np.round(c), 0, 255).astype(np.uint8)


def plane_mesh(corner, edge_u, edge_v, color, checker_color=None, tile_m: float = 0.5,
               label: int = 0, obj_id: int = 0, name: str = "") -> Scene:
    """A parallelogram `corner + a*edge_u + b*edge_v`, a, b in [0, 1], split into tiles about
    `tile_m` wide. Each tile has its own 4 vertices so a checker (`color` / `checker_color`,
    RGB 0..255) has sharp edges. The front face normal is edge_u x edge_v.

    corner, edge_u, edge_v: 3-vectors (metres) in the world frame; colours (3,) RGB; all numeric
    array-likes on the host (read as float64; colours rounded to uint8).
    """
    corner, eu, ev = (np.asarray(x, np.float64).reshape(3) for x in (corner, edge_u, edge_v))
    if tile_m <= 0:
        raise ValueError(f"tile_m must be > 0 metres, got {tile_m}")
    if np.linalg.norm(np.cross(eu, ev)) < 1e-12:
        raise ValueError("edge_u and edge_v must be non-zero and not parallel")
    nu = max(1, int(np.ceil(np.linalg.norm(eu) / tile_m - 1e-9)))
    nv = max(1, int(np.ceil(np.linalg.norm(ev) / tile_m - 1e-9)))
    iu, iv = np.meshgrid(np.arange(nu), np.arange(nv), indexing="ij")
    iu, iv = iu.ravel(), iv.ravel()
    # Tile corners in (a, b) parameter space: (0,0), (1,0), (1,1), (0,1) per tile.
    da = np.array([0, 1, 1, 0]); db = np.array([0, 0, 1, 1])
    a = (iu[:, None] + da) / nu
    b = (iv[:, None] + db) / nv
    verts = corner + a[..., None] * eu + b[..., None] * ev             # (n_tiles, 4, 3)
    base = 4 * np.arange(len(iu))[:, None]
    tris = np.concatenate([base + [0, 1, 2], base + [0, 2, 3]], axis=1).reshape(-1, 3)
    c0 = _rgb(color)
    c1 = c0 if checker_color is None else _rgb(checker_color)
    tile_col = np.where(((iu + iv) % 2 == 0)[:, None], c0, c1)
    cols = np.repeat(tile_col, 4, axis=0)
    return _one_object(verts.reshape(-1, 3), tris, cols, label, obj_id, name)


def box_mesh(center, size, color, checker_color=None, tile_m: float = 0.5, yaw_rad: float = 0.0,
             label: int = 0, obj_id: int = 0, name: str = "") -> Scene:
    """A closed box with outward normals. center (3,) metres, size (3,) full extents (metres)
    along the box's own axes, rotated by `yaw_rad` about world z; colours (3,) RGB 0..255. All
    numeric array-likes on the host (read as float64; colours rounded to uint8)."""
    c = np.asarray(center, np.float64).reshape(3)
    h = np.asarray(size, np.float64).reshape(3) / 2
    if np.any(h <= 0):
        raise ValueError(f"box size must be > 0 on every axis, got {2 * h}")
    ex, ey, ez = np.diag(h * 2)
    lo = -h
    # (corner, edge_u, edge_v) for each face, with edge_u x edge_v pointing outwards.
    faces = [
        (lo, ey, ex), (lo + ez, ex, ey),                        # bottom (-z), top (+z)
        (lo, ex, ez), (lo + ey, ez, ex),                        # -y, +y
        (lo, ez, ey), (lo + ex, ey, ez),                        # -x, +x
    ]
    parts = [plane_mesh(o, u, v, color, checker_color, tile_m, label, obj_id, name) for o, u, v in faces]
    s = Scene.merge(parts)
    cz, sz = np.cos(yaw_rad), np.sin(yaw_rad)
    R = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    s.vertices = (s.vertices.astype(np.float64) @ R.T + c).astype(np.float32)
    return s


def cylinder_mesh(base_center, radius_m: float, height_m: float, color, segments: int = 24,
                  capped: bool = True, label: int = 0, obj_id: int = 0, name: str = "",
                  max_aspect: float = 4.0) -> Scene:
    """A vertical (z-axis) cylinder standing on `base_center` (3,) metres (numeric array-like,
    read as float64), with outward normals, coloured `color` (3,) RGB 0..255 (rounded to uint8).
    `segments` facets around; the side is split into rings so no facet is more than
    `max_aspect` times taller than wide (float32 closest-point queries lose about a millimetre
    on metre-long sliver triangles); caps are triangle fans when `capped`."""
    if radius_m <= 0 or height_m <= 0 or segments < 3 or max_aspect <= 0:
        raise ValueError(f"need radius_m > 0, height_m > 0, segments >= 3, max_aspect > 0; got "
                         f"{radius_m}, {height_m}, {segments}, {max_aspect}")
    b = np.asarray(base_center, np.float64).reshape(3)
    facet_w = 2 * radius_m * np.sin(np.pi / segments)
    n_rings = int(np.clip(np.ceil(height_m / (max_aspect * facet_w)), 1, 500))
    ang = 2 * np.pi * np.arange(segments) / segments
    ring = np.stack([radius_m * np.cos(ang), radius_m * np.sin(ang), np.zeros(segments)], 1)
    z = np.linspace(0, height_m, n_rings + 1)
    verts = [ring + b + [0, 0, zk] for zk in z]
    i = np.arange(segments); j = (i + 1) % segments
    tris = []
    for r in range(n_rings):
        lo, hi = r * segments, (r + 1) * segments
        tris += [np.stack([lo + i, lo + j, hi + j], 1), np.stack([lo + i, hi + j, hi + i], 1)]
    if capped:
        verts += [b[None], (b + [0, 0, height_m])[None]]
        c_lo, c_hi = (n_rings + 1) * segments, (n_rings + 1) * segments + 1
        top = n_rings * segments
        tris += [np.stack([np.full(segments, c_lo), j, i], 1),
                 np.stack([np.full(segments, c_hi), top + i, top + j], 1)]
    verts = np.concatenate(verts)
    cols = np.repeat(_rgb(color)[None], len(verts), 0)
    return _one_object(verts, np.concatenate(tris), cols, label, obj_id, name)


def sphere_mesh(center, radius_m: float, color, n_lat: int = 12, n_lon: int = 24,
                label: int = 0, obj_id: int = 0, name: str = "") -> Scene:
    """A UV sphere of `radius_m` around `center` (3,) metres (numeric array-like, read as
    float64), with outward normals, coloured `color` (3,) RGB 0..255 (rounded to uint8)."""
    if radius_m <= 0 or n_lat < 2 or n_lon < 3:
        raise ValueError(f"need radius_m > 0, n_lat >= 2, n_lon >= 3; got {radius_m}, {n_lat}, {n_lon}")
    c = np.asarray(center, np.float64).reshape(3)
    theta = np.pi * np.arange(1, n_lat) / n_lat                        # interior latitudes
    phi = 2 * np.pi * np.arange(n_lon) / n_lon
    t, p = np.meshgrid(theta, phi, indexing="ij")
    ring = np.stack([np.sin(t) * np.cos(p), np.sin(t) * np.sin(p), np.cos(t)], -1)
    verts = np.concatenate([[[0, 0, 1]], ring.reshape(-1, 3), [[0, 0, -1]]]) * radius_m + c
    south = len(verts) - 1
    k = np.arange(n_lon); k1 = (k + 1) % n_lon
    tris = [np.stack([np.zeros(n_lon, int), 1 + k, 1 + k1], 1)]
    for r in range(n_lat - 2):
        a, b = 1 + r * n_lon, 1 + (r + 1) * n_lon
        tris += [np.stack([a + k, b + k, b + k1], 1), np.stack([a + k, b + k1, a + k1], 1)]
    last = 1 + (n_lat - 2) * n_lon
    tris.append(np.stack([np.full(n_lon, south), last + k1, last + k], 1))
    cols = np.repeat(_rgb(color)[None], len(verts), 0)
    return _one_object(verts, np.concatenate(tris), cols, label, obj_id, name)


# ---------------------------------------------------------------------------------------------
# Scenes

def _random_color(rng: np.random.Generator) -> np.ndarray:
    # Saturated, well separated colours make colour-integration errors visible.
    hue = rng.uniform(0, 6)
    x = 1 - abs(hue % 2 - 1)
    rgb = [(1, x, 0), (x, 1, 0), (0, 1, x), (0, x, 1), (x, 0, 1), (1, 0, x)][int(hue) % 6]
    return np.round(60 + 180 * np.asarray(rgb)).astype(np.uint8)


class _Placer:
    """Rejection sampler for non-overlapping axis-aligned footprints on the floor."""

    def __init__(self, rng: np.random.Generator, x_range, y_range, keep_out_center, keep_out_radius_m):
        self.rng, self.x_range, self.y_range = rng, x_range, y_range
        self.center, self.radius = np.asarray(keep_out_center, float), keep_out_radius_m
        self.taken: list[tuple[float, float, float, float]] = []

    def place(self, half_x: float, half_y: float, gap_m: float = 0.1) -> tuple[float, float] | None:
        for _ in range(200):
            x = self.rng.uniform(self.x_range[0] + half_x, self.x_range[1] - half_x)
            y = self.rng.uniform(self.y_range[0] + half_y, self.y_range[1] - half_y)
            # Distance from the keep-out centre to the footprint rectangle.
            d = np.hypot(max(abs(x - self.center[0]) - half_x, 0), max(abs(y - self.center[1]) - half_y, 0))
            if d < self.radius:
                continue
            box = (x - half_x - gap_m, x + half_x + gap_m, y - half_y - gap_m, y + half_y + gap_m)
            if any(box[0] < t[1] and t[0] < box[1] and box[2] < t[3] and t[2] < box[3] for t in self.taken):
                continue
            self.taken.append(box)
            return x, y
        return None


def _indoor(seed: int) -> Scene:
    rng = np.random.default_rng(seed)
    sx, sy, sz = ROOM_SIZE_M
    x0, y0 = -sx / 2, -sy / 2
    L = LABEL_IDS
    parts = [
        # Room surfaces face inwards: the sensors are inside.
        plane_mesh((x0, y0, 0), (sx, 0, 0), (0, sy, 0), (200, 200, 200), (60, 60, 60), 0.5,
                   L["floor"], 1, "floor"),
        plane_mesh((x0, y0, sz), (0, sy, 0), (sx, 0, 0), (235, 235, 225), (210, 210, 200), 1.0,
                   L["ceiling"], 2, "ceiling"),
        plane_mesh((x0, y0, 0), (0, 0, sz), (sx, 0, 0), (200, 80, 80), (230, 150, 150), 0.5,
                   L["wall"], 3, "wall_south"),
        plane_mesh((x0, -y0, 0), (sx, 0, 0), (0, 0, sz), (80, 160, 80), (150, 220, 150), 0.5,
                   L["wall"], 4, "wall_north"),
        plane_mesh((x0, y0, 0), (0, sy, 0), (0, 0, sz), (80, 80, 200), (150, 150, 230), 0.5,
                   L["wall"], 5, "wall_west"),
        plane_mesh((-x0, y0, 0), (0, 0, sz), (0, sy, 0), (200, 180, 70), (230, 220, 140), 0.5,
                   L["wall"], 6, "wall_east"),
    ]
    # Objects stay 1.1 m away from the room centre so camera trajectories there stay free.
    placer = _Placer(rng, (x0 + 0.05, -x0 - 0.05), (y0 + 0.05, -y0 - 0.05), (0, 0), 1.1)
    next_id = 10

    def add(part_fn, *args, **kw):
        nonlocal next_id
        parts.append(part_fn(*args, obj_id=next_id, **kw))
        next_id += 1

    furniture = [("table", (1.2, 0.8, 0.75)), ("cabinet", (0.5, 1.0, 1.8)), ("sofa", (1.8, 0.8, 0.8)),
                 ("crate", (0.5, 0.5, 0.5))]
    for name, size in furniture:
        size = np.asarray(size) * rng.uniform(0.85, 1.15, 3)
        xy = placer.place(size[0] / 2, size[1] / 2)
        if xy is not None:
            add(box_mesh, (xy[0], xy[1], size[2] / 2), size, _random_color(rng), _random_color(rng),
                0.25, label=L["furniture"], name=name)
    r = rng.uniform(0.15, 0.25)
    xy = placer.place(r, r)
    if xy is not None:
        add(cylinder_mesh, (xy[0], xy[1], 0), r, rng.uniform(0.5, 1.0), _random_color(rng),
            label=L["object"], name="bin")
    r = rng.uniform(0.15, 0.3)
    xy = placer.place(r, r)
    if xy is not None:
        add(sphere_mesh, (xy[0], xy[1], r), r, _random_color(rng), label=L["object"], name="ball")
    # Thin structures: a 2 cm board standing upright, and a 2 cm pole floor to ceiling.
    bw, bh = rng.uniform(0.8, 1.2), rng.uniform(0.8, 1.2)
    xy = placer.place(bw / 2, 0.01)
    if xy is not None:
        add(box_mesh, (xy[0], xy[1], bh / 2), (bw, 0.02, bh), (250, 250, 250), (30, 30, 30), 0.2,
            label=L["thin_structure"], name="thin_board")
    xy = placer.place(0.01, 0.01, gap_m=0.3)
    if xy is not None:
        add(cylinder_mesh, (xy[0], xy[1], 0), 0.01, sz, (20, 20, 20), segments=12,
            label=L["thin_structure"], name="thin_pole")
    return Scene.merge(parts, kind="indoor")


def _outdoor(seed: int) -> Scene:
    rng = np.random.default_rng(seed)
    lx, ly = STREET_SIZE_M
    x0, y0 = -lx / 2, -ly / 2
    L = LABEL_IDS
    rw, sw, sh = ROAD_HALF_WIDTH_M, SIDEWALK_WIDTH_M, SIDEWALK_HEIGHT_M
    parts = [
        plane_mesh((x0, -rw, 0), (lx, 0, 0), (0, 2 * rw, 0), (70, 70, 75), (90, 90, 95), 2.0,
                   L["road"], 1, "road"),
        box_mesh((0, -rw - sw / 2, sh / 2), (lx, sw, sh), (170, 165, 150), (140, 135, 120), 1.0,
                 label=L["sidewalk"], obj_id=2, name="sidewalk_south"),
        box_mesh((0, rw + sw / 2, sh / 2), (lx, sw, sh), (170, 165, 150), (140, 135, 120), 1.0,
                 label=L["sidewalk"], obj_id=3, name="sidewalk_north"),
    ]
    next_id = 10
    building_depth = -y0 - rw - sw                                       # 3 m behind the sidewalk
    for side in (-1, 1):
        x = x0
        while x < -x0 - 1e-6:
            w = min(rng.uniform(5, 10), -x0 - x)
            h = rng.uniform(6, 15)
            yc = side * (rw + sw + building_depth / 2)
            parts.append(box_mesh((x + w / 2, yc, h / 2), (w, building_depth, h), _random_color(rng),
                                  _random_color(rng), 1.5, label=L["building"], obj_id=next_id,
                                  name=f"building_{next_id}"))
            next_id += 1
            x += w
        for px in np.arange(x0 + 4, -x0 - 2, 8) + rng.uniform(-1, 1):
            parts.append(cylinder_mesh((px, side * (rw + 0.5), sh), 0.08, 5.0, (120, 120, 130), 12,
                                       label=L["pole"], obj_id=next_id, name=f"pole_{next_id}"))
            next_id += 1
    # Parked cars along both kerbs: a body box plus a cabin box, one object each.
    for side in (-1, 1):
        x = x0 + rng.uniform(1, 4)
        while x < -x0 - 5:
            length, width = rng.uniform(3.8, 4.8), rng.uniform(1.7, 1.9)
            yc = side * (rw - width / 2 - 0.3)
            color = _random_color(rng)
            body = box_mesh((x + length / 2, yc, 0.25 + 0.35), (length, width, 0.7), color, None, 1.0,
                            label=L["car"], obj_id=next_id, name=f"car_{next_id}")
            cabin = box_mesh((x + length * 0.45, yc, 0.95 + 0.25), (length * 0.5, width * 0.9, 0.5),
                             (40, 50, 60), None, 1.0, label=L["car"], obj_id=next_id, name=f"car_{next_id}")
            parts.append(Scene.merge([body, cabin]))
            next_id += 1
            x += length + rng.uniform(2, 8)
    return Scene.merge(parts, kind="outdoor")


def make_scene(kind: str, seed: int = 0) -> Scene:
    """Build a reproducible scene. kind: "indoor" (6 x 5 x 2.6 m room centred on the origin, floor
    at z = 0) or "outdoor" (40 x 20 m street along x, ground at z = 0). Same (kind, seed) ->
    identical arrays."""
    builders = {"indoor": _indoor, "outdoor": _outdoor}
    if kind not in builders:
        raise ValueError(f"unknown scene kind {kind!r}; expected one of {sorted(builders)}")
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise ValueError(f"scene seed must be a non-negative integer, got {seed!r}")
    return builders[kind](int(seed))
