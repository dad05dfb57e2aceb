"""Incremental meshing (Mapper.update_mesh) re-meshes only the bricks a change can reach.

A brick's marching-cubes cells reach one sample into its +x, +y and +z neighbours (core.mesh), so a
change to brick b alters the triangles of b and of the bricks b - d, d in {0,1}^3 \\ {0} (its -x/-y/-z
neighbours, edges and corner included) and of no other brick. The observable is MeshUpdate:
`remeshed_keys` (the bricks whose triangles the update replaces) and `mesh.tri_brick_keys` (the
owner of every fresh triangle); Mapper.mesh_store() keeps the rest. Checked here:
  * the re-meshed set holds the changed bricks and lies within them and their allocated lower
    neighbours (the +x/+y/+z side and far bricks are left alone); it is that whole set, as
    core.mesh.affected_by documents;
  * the triangles of every other brick are bitwise the ones from before, in the same order;
  * the store still equals a fresh full meshing, brick by brick (the seam rule is sufficient), and
    a lower neighbour's triangles did change (the seam rule is necessary).
Changes: a small RGB-D frame fused through Mapper.integrate, a TSDF rewritten in one brick, a new
brick allocated next to meshed ones.
"""
from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest
import torch

from conftest import CPU_BACKENDS, IMG_H, IMG_W, make_config
from voxmap_ros.core import mesh, morton
from voxmap_ros.core.mapper import Mapper
from voxmap_ros.types import Frame

pytestmark = pytest.mark.usefixtures("single_thread")

VOXEL_M = 0.05
# The bricks whose cells read brick b: b - d for these d (b itself first).
LOWER = list(itertools.product((0, 1), repeat=3))
LATTICE = 4                            # synthetic maps: LATTICE^3 bricks from (0, 0, 0)
SPHERE_CENTRE_VOX = 16.0               # a lattice point: the corner shared by bricks (1..2)^3
SPHERE_RADIUS_VOX = 6.0                # the surface crosses all 8 bricks around that corner
WALL_X_VOX = 28.5                      # a wall x + 0.03 y + 0.02 z = this: x in 26.9..28.5, the x = 3 bricks
WEIGHT = 8.0


# ------------------------------------------------------------------------------------ helpers
def key_of(coord) -> int:
    return int(morton.encode(torch.tensor([coord], dtype=torch.int64), 0)[0])


def alive_keys(m: Mapper) -> set[int]:
    o = m.octree
    return set(o.node_key[o.brick_node[o.alive_slots()].long()].tolist())


def dirty_keys(m: Mapper) -> set[int]:
    o = m.octree
    slots = (o.brick_dirty & o.brick_alive).nonzero().squeeze(1)
    return set(o.node_key[o.brick_node[slots].long()].tolist())


def reach(m: Mapper, changed: set[int]) -> set[int]:
    """The allocated bricks whose meshes read a brick of `changed` (keys): b - d, d in {0,1}^3."""
    if not changed:
        return set()
    coords, _ = morton.decode(torch.tensor(sorted(changed), dtype=torch.int64))
    cand = {key_of((c - torch.tensor(d)).tolist()) for c in coords for d in LOWER}
    return cand & alive_keys(m)


def voxel_data(m: Mapper) -> dict[int, bytes]:
    """key -> the bytes of the brick's tsdf, weight and colour (what meshing reads)."""
    o = m.octree
    slots = o.alive_slots()
    keys = o.node_key[o.brick_node[slots].long()].tolist()
    a = o.attrs
    rows = torch.cat([a["tsdf"][slots].view(torch.uint8).reshape(len(keys), -1),
                      a["weight"][slots].view(torch.uint8).reshape(len(keys), -1),
                      a["color"][slots].reshape(len(keys), -1)], 1).numpy()
    return {k: r.tobytes() for k, r in zip(keys, rows)}


def pieces(bm: mesh.BrickMesh) -> dict[int, tuple]:
    """key -> the brick's triangles in store order, bitwise (vertices as int32 bits)."""
    keys = bm.tri_brick_keys.tolist()
    v = bm.tri_vertices.contiguous().view(torch.int32).reshape(len(keys), -1).numpy()
    c = bm.tri_colors.reshape(len(keys), -1).numpy()
    e = bm.tri_edge_keys.numpy()
    out: dict[int, list] = {}
    for i, k in enumerate(keys):
        out.setdefault(k, []).append((v[i].tobytes(), c[i].tobytes(), tuple(e[i].tolist())))
    return {k: tuple(t) for k, t in out.items()}


def fresh_full(m: Mapper) -> mesh.BrickMesh:
    """Every alive brick meshed from scratch with the mapper's settings (public core.mesh calls)."""
    t = m.config.tsdf
    backend = "cpp" if m.backend == "cpp" and m.device.type == "cpu" else "torch"
    return mesh.mesh_bricks(m.octree, m.octree.alive_slots(), t.min_weight_mesh, backend=backend,
                            max_jump=mesh.max_jump_tsdf(t.mesh_max_jump_vox, t.trunc_vox))


def assert_store_is_full_meshing(m: Mapper) -> None:
    got = {k: Counter(p) for k, p in pieces(m.mesh_store()).items()}
    want = {k: Counter(p) for k, p in pieces(fresh_full(m)).items()}
    assert got.keys() == want.keys()
    bad = [k for k in want if got[k] != want[k]]
    assert not bad, f"{len(bad)} bricks differ from a full meshing"


def check_update(m: Mapper, before: dict[int, tuple], changed: set[int]) -> tuple[object, set[int]]:
    """update_mesh after bricks `changed` changed: the re-meshed set holds the changed bricks and
    lies within reach(changed), fresh triangles belong to it, every other brick keeps its triangles
    bitwise (same order), and the store equals a full meshing (so no brick that needed re-meshing
    was left out). Returns (the MeshUpdate, the re-meshed keys)."""
    expected = reach(m, changed)
    upd = m.update_mesh()
    remeshed = set(upd.remeshed_keys.tolist())
    assert upd.remeshed_keys.numel() == len(remeshed)                     # no brick twice
    assert changed <= remeshed, "a changed brick was not re-meshed"
    assert remeshed <= expected, f"re-meshed beyond the changed bricks' lower neighbours: {remeshed - expected}"
    assert set(upd.mesh.tri_brick_keys.tolist()) <= remeshed
    assert upd.removed_keys.numel() == 0
    after = pieces(m.mesh_store())
    untouched = set(before) - remeshed
    assert untouched, "the test needs bricks outside the change"
    for k in untouched:
        assert after.get(k) == before[k], f"brick {k} is outside the change but its triangles changed"
    assert set(after) - remeshed <= set(before)             # no new triangles outside the change
    assert_store_is_full_meshing(m)
    return upd, remeshed


# ------------------------------------------------------------------------------------ fused frames
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_a_small_frame_remeshes_only_the_bricks_it_touched_and_their_lower_neighbours(indoor_data, backend):
    m = Mapper(make_config(VOXEL_M, map__backend=backend))
    for d, c, T in indoor_data.frames[:4]:
        m.integrate(Frame(T, depth=d, rgb=c, K=indoor_data.K))
    first = m.update_mesh()
    assert first.remeshed_keys.numel() == m.octree.num_bricks           # the first update meshes everything
    assert dirty_keys(m) == set()
    before = pieces(m.mesh_store())
    data_before = voxel_data(m)
    # Re-observe a 3x3-pixel patch of an already fused view: a few bricks that hold surface.
    d, c, T = indoor_data.frames[3]
    patch = np.zeros_like(d)
    v, u = IMG_H // 2, IMG_W // 2
    patch[v - 1:v + 2, u - 1:u + 2] = d[v - 1:v + 2, u - 1:u + 2]
    assert (patch > 0).sum() == 9
    assert m.integrate(Frame(T, depth=patch, rgb=c, K=indoor_data.K)) > 0
    changed = dirty_keys(m)
    data_after = voxel_data(m)
    modified = {k for k in data_after if data_before.get(k) != data_after[k]}
    assert modified, "the patch changed no voxel"
    assert modified <= changed, "a brick whose voxels changed is not marked for re-meshing"
    assert set(data_after) == set(data_before)                         # no new bricks: a known surface
    assert 0 < len(changed) <= 10 < len(before)                          # a small change of a larger map
    assert changed & set(before), "the patch should touch bricks that have triangles"
    upd, remeshed = check_update(m, before, changed)
    assert remeshed == reach(m, changed)   # core.mesh's rule: the bricks and all their allocated lower neighbours
    assert len(remeshed) < len(alive_keys(m)) // 10
    assert upd.mesh.tri_vertices.shape[0] > 0
    # Nothing changed since: nothing re-meshed, the store stays.
    again = m.update_mesh()
    assert again.remeshed_keys.numel() == 0 and again.mesh.tri_vertices.shape[0] == 0


# ------------------------------------------------------------------------------------ direct writes
def sphere_tsdf(m: Mapper, slots: torch.Tensor, radius_vox: float) -> torch.Tensor:
    """Truncated, normalised SDF (N, 512) for bricks `slots`: a sphere around SPHERE_CENTRE_VOX and,
    far from it, a tilted wall through the x = 3 layer of bricks (triangles outside any change)."""
    vs = m.octree.voxel_size_m
    p = m.octree.voxel_centers(slots).double() / vs                          # voxel units
    sphere = (p - SPHERE_CENTRE_VOX).norm(dim=-1) - radius_vox
    n = torch.tensor([1.0, 0.03, 0.02], dtype=torch.float64)
    wall = (WALL_X_VOX - p @ n) / n.norm()
    return (torch.minimum(sphere, wall) / m.config.tsdf.trunc_vox).clamp(-1, 1)


def write_bricks(m: Mapper, slots: torch.Tensor, radius_vox: float) -> None:
    """Voxel data of bricks `slots` through the octree's attribute tensors: sphere TSDF, weight, colour."""
    a = m.octree.attrs
    a["tsdf"][slots] = sphere_tsdf(m, slots, radius_vox).to(a["tsdf"].dtype)
    a["weight"][slots] = WEIGHT
    idx = m.octree.voxel_centers(slots) / m.octree.voxel_size_m
    a["color"][slots] = (idx * 7).long().remainder(256).to(torch.uint8)


def sphere_map(backend: str, skip=None) -> Mapper:
    """A LATTICE^3 block of bricks holding sphere_tsdf (but brick `skip`), meshed once."""
    m = Mapper(make_config(VOXEL_M, map__backend=backend))
    coords = [c for c in itertools.product(range(LATTICE), repeat=3) if c != skip]
    slots, new = m.octree.allocate_bricks(torch.tensor(coords, dtype=torch.int64))
    assert bool(new.all())
    write_bricks(m, slots, SPHERE_RADIUS_VOX)
    upd = m.update_mesh()
    assert upd.remeshed_keys.numel() == len(coords)
    assert m.mesh_store().tri_vertices.shape[0] > 100
    assert_store_is_full_meshing(m)
    return m


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("coord", [(2, 2, 2), (0, 2, 1), (3, 3, 3)])
def test_rewriting_one_brick_remeshes_it_and_the_bricks_whose_cells_read_it(backend, coord):
    """(2, 2, 2): all 7 lower neighbours exist and hold the same sphere; (0, 2, 1): the -x side is
    off the map; (3, 3, 3): the far corner, free space only."""
    m = sphere_map(backend)
    before = pieces(m.mesh_store())
    o = m.octree
    slot = o.lookup_bricks(torch.tensor([coord]))
    assert int(slot[0]) >= 0
    old_tsdf = o.attrs["tsdf"][slot].clone()
    write_bricks(m, slot, SPHERE_RADIUS_VOX + 1.5)           # the surface moves out by 1.5 voxels here
    o.brick_dirty[slot] = True                               # a writer's duty (as Mapper.integrate does)
    b = key_of(coord)
    neighbours = reach(m, {b})
    expected_n = sum(all(0 <= ci - di < LATTICE for ci, di in zip(coord, d)) for d in LOWER)
    assert len(neighbours) == expected_n
    changed_tsdf = not torch.equal(old_tsdf, o.attrs["tsdf"][slot])
    upd, remeshed = check_update(m, before, {b})
    assert remeshed == neighbours          # core.mesh's rule: the brick and all its allocated lower neighbours
    after = pieces(m.mesh_store())
    up = [key_of(tuple(ci + di for ci, di in zip(coord, d))) for d in LOWER[1:]]
    for k in up:                                             # the +x/+y/+z side was not re-meshed
        assert k not in remeshed
    if coord == (2, 2, 2):
        assert changed_tsdf and b in before and after[b] != before[b]
        # The cells of (1, 2, 2) at its +x face (and those of the other face and edge neighbours)
        # read voxels of (2, 2, 2): their triangles changed, so re-meshing the changed brick alone
        # would have left stale seams. The corner neighbour (1, 1, 1) reads (2, 2, 2) through one
        # cell only, at the sphere's centre (all corners inside): no triangle there either way.
        seam = {k for k in neighbours - {b} if after.get(k) != before.get(k)}
        assert seam == neighbours - {b, key_of((1, 1, 1))}
    if coord == (3, 3, 3):
        # Only the wall reaches this brick, and the new sphere radius does not move it: re-meshed
        # (it was marked changed) to the very same triangles.
        assert not changed_tsdf and b in before and after[b] == before[b]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_a_new_brick_remeshes_itself_and_its_lower_neighbours_only(backend):
    """A brick allocated where the map had none (allocate_bricks marks it changed): the lower
    neighbours' +face cells, which had no samples there, now have triangles."""
    coord = (2, 2, 2)
    m = sphere_map(backend, skip=coord)
    before = pieces(m.mesh_store())
    slots, new = m.octree.allocate_bricks(torch.tensor([coord], dtype=torch.int64))
    assert bool(new.all())
    write_bricks(m, slots, SPHERE_RADIUS_VOX)
    b = key_of(coord)
    assert dirty_keys(m) == {b}
    upd, remeshed = check_update(m, before, {b})
    assert remeshed == reach(m, {b}) and len(remeshed) == 8
    after = pieces(m.mesh_store())
    assert b in after and b not in before
    corner = key_of((1, 1, 1))                                # its one cell reading b: inside the sphere
    for k in remeshed - {b, corner}:                          # face / edge neighbours gained seam cells
        assert len(after[k]) > len(before[k]), k
    assert after[corner] == before[corner]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_the_full_mesh_skips_free_bricks_and_equals_meshing_every_brick(indoor_data, backend):
    """extract_mesh meshes only bricks whose padded block holds a valid negative voxel; on a map
    with LiDAR free space (most of its bricks) the result is the mesh of every brick, bit for bit."""
    from voxmap_ros.sim import lidar_trajectory, scan_lidar
    m = Mapper(make_config(VOXEL_M, **{"map.backend": backend}))
    for d, c, T in indoor_data.frames[:2]:
        m.integrate(Frame(T, depth=d, rgb=c, K=indoor_data.K))
    for T in lidar_trajectory(indoor_data.scene, 2, seed=0):
        m.integrate(Frame(T, points=scan_lidar(indoor_data.scene, T, beams=8, hfov_samples=256)))
    o = m.octree
    slots = o.alive_slots()
    skipped = int((~mesh.may_have_surface(o, slots, m.config.tsdf.min_weight_mesh)).sum())
    assert skipped > slots.numel() // 3, (skipped, slots.numel())
    got, want = m.extract_mesh(), fresh_full(m).to_mesh()
    assert len(got.triangles) > 500
    for a, b in zip((got.vertices, got.triangles, got.colors), (want.vertices, want.triangles, want.colors)):
        assert np.array_equal(a, b)
