"""Marching-cubes case table, derived at import time from the cube's geometry.

Conventions (shared with marching_cubes.py):
    Corner i of a cell sits at offset CORNER_OFFSETS[i] = (i & 1, (i >> 1) & 1, (i >> 2) & 1) in
    (x, y, z). A configuration index has bit i set when corner i is *inside* (sdf < iso); a corner
    with sdf >= iso is outside, so a sample exactly on the iso level counts as free space.
    Edge e joins corners EDGE_CORNERS[e] = (lo, hi), lo being the corner with the smaller
    coordinate along EDGE_AXIS[e] (0 = x, 1 = y, 2 = z). Edges 0..3 run along x, 4..7 along y,
    8..11 along z; EDGE_LOWER_OFFSET[e] is the cell-relative offset of corner lo.

How the table is built (no hand-typed case list):
    1. On each of the 6 cube faces, join the face's sign-change edges by segments. A face has 0, 2
       or 4 sign-change edges; with 4 (the two inside corners sit on a diagonal) the face is
       ambiguous and we always cut off each inside corner on its own. The rule reads only the
       face's 4 corners, so the two cells sharing a face draw the same segments there and the
       surface has no cracks.
    2. Orient every segment so that, looking at the face from outside the cell, the face's
       outside (sdf >= iso) part lies on its left. Along a segment the surface patch's boundary
       then runs the same way as the boundary of that outside region (both close off the outside
       part of the cell), which makes the fan triangles' right-hand normals point from the
       inside (negative) toward the outside (positive).
    3. Every sign-change edge now starts exactly one segment and ends exactly one (it lies on
       two faces), so following segments head to tail partitions them into closed loops.
    4. Fan-triangulate each loop, picking the apex so that no diagonal joins two crossing points
       of one ambiguous face: the neighbouring cell may draw that same diagonal, and the edge
       would then border four triangles. (Two crossing points on an unambiguous face are always
       joined by that face's segment; every other diagonal joins edges sharing no face, so it is
       private to the cell.) Loops have 3..7 vertices here and some apex always qualifies.

All tensors are int64 on the CPU; callers move them to their device once and cache them.
"""
from __future__ import annotations

import torch

N_CONFIGS = 256

_CORNERS = [(i & 1, (i >> 1) & 1, (i >> 2) & 1) for i in range(8)]
CORNER_OFFSETS = torch.tensor(_CORNERS, dtype=torch.int64)                                  # (8, 3)


def _edge_list() -> list[tuple[int, int, int]]:
    """(lo corner, hi corner, axis) for the 12 edges, grouped by axis."""
    edges = []
    for axis in range(3):
        for c in range(8):
            if not (c >> axis) & 1:
                edges.append((c, c | (1 << axis), axis))
    return edges


_EDGES = _edge_list()
EDGE_CORNERS = torch.tensor([[lo, hi] for lo, hi, _ in _EDGES], dtype=torch.int64)       # (12, 2)
EDGE_AXIS = torch.tensor([axis for _, _, axis in _EDGES], dtype=torch.int64)              # (12,)
EDGE_LOWER_OFFSET = CORNER_OFFSETS[EDGE_CORNERS[:, 0]].clone()                            # (12, 3)
_EDGE_OF_PAIR = {frozenset((lo, hi)): e for e, (lo, hi, _) in enumerate(_EDGES)}


def _faces() -> list[tuple[list[int], tuple[int, int, int]]]:
    """The 6 faces as (4 corners in cyclic order around the face, outward unit normal)."""
    faces = []
    for axis in range(3):
        u, v = [a for a in range(3) if a != axis]
        for side in (0, 1):
            ring = []
            for du, dv in ((0, 0), (1, 0), (1, 1), (0, 1)):
                ring.append((side << axis) | (du << u) | (dv << v))
            normal = [0, 0, 0]
            normal[axis] = 1 if side else -1
            faces.append((ring, tuple(normal)))
    return faces


_FACES = _faces()


def _sub(a, b):
    return tuple(x - y for x, y in zip(a, b))


def _cross(a, b):
    return (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def _midpoint2(e: int) -> tuple[int, int, int]:
    """Twice the edge midpoint, kept integral so the orientation tests are exact."""
    lo, hi, _ = _EDGES[e]
    return tuple(a + b for a, b in zip(_CORNERS[lo], _CORNERS[hi]))


def _corner2(c: int) -> tuple[int, int, int]:
    return tuple(2 * a for a in _CORNERS[c])


def _face_segments(config: int, ring: list[int], normal) -> list[tuple[int, int]]:
    """Oriented segments (from edge, to edge) that the iso-line draws on one face."""
    inside = [bool((config >> c) & 1) for c in ring]
    # side k of the face joins ring[k] and ring[k+1]
    side_edge = [_EDGE_OF_PAIR[frozenset((ring[k], ring[(k + 1) % 4]))] for k in range(4)]
    crossing = [k for k in range(4) if inside[k] != inside[(k + 1) % 4]]
    if not crossing:
        return []
    if len(crossing) == 2:
        pairs = [(side_edge[crossing[0]], side_edge[crossing[1]])]
    else:
        # Ambiguous face: isolate each inside corner, i.e. join the two sides that meet at it.
        pairs = [(side_edge[(k - 1) % 4], side_edge[k]) for k in range(4) if inside[k]]
    segments = []
    for a, b in pairs:
        ma, mb = _midpoint2(a), _midpoint2(b)
        left = _cross(normal, _sub(mb, ma))
        lo, hi, _ = _EDGES[a]
        outside_corner = hi if (config >> lo) & 1 else lo
        side = _dot(_sub(_corner2(outside_corner), ma), left)
        assert side != 0, "a face segment passed through a corner"
        segments.append((a, b) if side > 0 else (b, a))
    return segments


def _ambiguous_faces(config: int) -> list[frozenset[int]]:
    """Edge sets of the faces whose 4 sides all change sign under `config`."""
    faces = []
    for ring, _ in _FACES:
        inside = [(config >> c) & 1 for c in ring]
        if inside[0] == inside[2] and inside[1] == inside[3] and inside[0] != inside[1]:
            faces.append(frozenset(_EDGE_OF_PAIR[frozenset((ring[k], ring[(k + 1) % 4]))] for k in range(4)))
    return faces


def _triangulate(loop: list[int], faces: list[frozenset[int]]) -> list[tuple[int, int, int]] | None:
    """Fan-triangulate a closed loop of edge ids without a diagonal that lies in an ambiguous face.

    Such a diagonal would join two crossing points of a face that the face's own segments keep
    apart; the cell on the other side of the face can draw the same diagonal, and the edge would
    then belong to four triangles. Any other diagonal joins two edges that share no face, so only
    this cell can ever produce it. Triangles keep the loop's orientation (vertices listed in loop
    order). Returns None when no apex gives such a fan.
    """
    n = len(loop)

    def allowed(i: int, j: int) -> bool:
        if (j - i) % n in (1, n - 1):
            return True                                  # a loop side, i.e. a face segment
        return not any(loop[i] in f and loop[j] in f for f in faces)

    # For every loop of every configuration some apex works (checked when the table is built),
    # so fans are all we need.
    for apex in range(n):
        if all(allowed(apex, (apex + k) % n) for k in range(2, n - 1)):
            order = loop[apex:] + loop[:apex]
            return [(order[0], order[k], order[k + 1]) for k in range(1, n - 1)]

    return None


def _config_triangles(config: int) -> list[tuple[int, int, int]]:
    nxt: dict[int, int] = {}
    for ring, normal in _FACES:
        for a, b in _face_segments(config, ring, normal):
            assert a not in nxt, f"config {config}: edge {a} starts two segments"
            nxt[a] = b
    assert sorted(nxt) == sorted(nxt.values()), f"config {config}: segments do not close into loops"
    faces = _ambiguous_faces(config)
    triangles = []
    remaining = set(nxt)
    while remaining:
        start = min(remaining)
        loop = [start]
        remaining.discard(start)
        e = nxt[start]
        while e != start:
            loop.append(e)
            remaining.discard(e)
            e = nxt[e]
        assert len(loop) >= 3, f"config {config}: loop shorter than a triangle"
        tris = _triangulate(loop, faces)
        assert tris is not None, f"config {config}: loop {loop} has no crack-free fan"
        triangles.extend(tris)
    return triangles


def build_tables() -> tuple[torch.Tensor, torch.Tensor]:
    """Derive the case table from scratch.

    Returns (tri_table (256, MAX_TRIANGLES, 3) int64 edge indices padded with -1,
    tri_count (256,) int64), both on the CPU.
    """
    per_config = [_config_triangles(c) for c in range(N_CONFIGS)]
    max_t = max(len(t) for t in per_config)
    table = torch.full((N_CONFIGS, max_t, 3), -1, dtype=torch.int64)
    for c, tris in enumerate(per_config):
        if tris:
            table[c, :len(tris)] = torch.tensor(tris, dtype=torch.int64)
    count = torch.tensor([len(t) for t in per_config], dtype=torch.int64)
    return table, count


TRI_TABLE, TRI_COUNT = build_tables()
MAX_TRIANGLES = int(TRI_TABLE.shape[1])
