"""The compiled mesher (kernels/cpu/mesh.cpp via native.mesh_bricks_cpp) against the torch one.

core.mesh meshes bricks from padded 9^3 blocks with core.marching_cubes (torch); the compiled twin
reads the same bricks and must give bitwise the same triangle soup in the same order: positions,
colours, edge keys and owning bricks. Scenes: bricks of random TSDF with every kind of unusable
sample (NaN, inf, weights below the threshold, missing neighbours), and a fused indoor map.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from voxmap_ros.core import mesh, native
from voxmap_ros.core.mapper import Mapper
from voxmap_ros.core.octree import SparseVoxelOctree
from voxmap_ros.types import Frame

from conftest import make_config

pytestmark = pytest.mark.skipif(not native.available(), reason=f"compiled kernels unavailable: "
                                f"{native.unavailable_reason()}")

MIN_WEIGHT = 1.0
FIELDS = ("tri_vertices", "tri_colors", "tri_edge_keys", "tri_brick_keys")


def assert_same_soup(a: mesh.BrickMesh, b: mesh.BrickMesh) -> None:
    for name in FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape, name
        if x.dtype.is_floating_point:
            x, y = x.view(torch.int32), y.view(torch.int32)        # bitwise, NaN-safe
        assert torch.equal(x, y), name


def random_octree(seed: int, n_bricks: int = 60) -> SparseVoxelOctree:
    """Bricks on a small lattice with holes (missing neighbours), a smooth random TSDF with sign
    changes, random weights around the threshold, random colours and some NaN / inf samples."""
    g = torch.Generator().manual_seed(seed)
    o = SparseVoxelOctree(0.05, initial_bricks=16)
    lattice = torch.stack(torch.meshgrid(*(torch.arange(-2, 3),) * 3, indexing="ij"), -1).reshape(-1, 3)
    coords = lattice[torch.randperm(lattice.shape[0], generator=g)[:n_bricks]]
    slots, _ = o.allocate_bricks(coords)
    n = slots.numel()
    xyz = torch.rand((n, 512, 3), generator=g)
    tsdf = torch.sin(6.0 * xyz.sum(-1) + torch.rand((n, 1), generator=g) * 6.0)
    bad = torch.rand((n, 512), generator=g)
    tsdf[::4] = tsdf[::4].abs()                      # every 4th brick: free space only
    tsdf[bad < 0.01] = float("nan")
    tsdf[(bad >= 0.01) & (bad < 0.02)] = float("inf")
    o.attrs["tsdf"][slots] = tsdf.half()
    o.attrs["weight"][slots] = torch.randint(0, 4, (n, 512), generator=g).half()
    o.attrs["color"][slots] = torch.randint(0, 256, (n, 512, 3), generator=g, dtype=torch.uint8)
    return o


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_bricks_match_torch(seed):
    o = random_octree(seed)
    slots = o.alive_slots()
    ref = mesh.mesh_bricks(o, slots, MIN_WEIGHT, backend="torch")
    got = mesh.mesh_bricks(o, slots, MIN_WEIGHT, backend="cpp")
    assert ref.tri_vertices.shape[0] > 100, "the random field should produce triangles"
    assert_same_soup(ref, got)


@pytest.mark.parametrize("seed", [0, 1])
def test_may_have_surface_matches_torch(seed):
    o = random_octree(seed)
    slots = o.alive_slots()
    ref = mesh.may_have_surface(o, slots, MIN_WEIGHT, backend="torch")
    got = mesh.may_have_surface(o, slots, MIN_WEIGHT, backend="cpp")
    assert torch.equal(ref, got)
    neg = native.bricks_negative_cpp(o, slots, MIN_WEIGHT)
    want = ((o.attrs["tsdf"][slots] < 0) & (o.attrs["weight"][slots].float() >= MIN_WEIGHT)).any(1)
    assert torch.equal(neg, want)
    assert 0 < int(neg.sum()) < slots.numel(), "some bricks with and some without a negative voxel"


@pytest.mark.parametrize("threads,max_jump_vox", [(1, 0.0), (2, 3.0)])
def test_fused_map_matches_torch_and_thread_count_does_not_matter(indoor_data, threads, max_jump_vox):
    cfg = make_config(0.05)
    jump = mesh.max_jump_tsdf(max_jump_vox, cfg.tsdf.trunc_vox)          # 0 = off; 3 voxels removes many cells
    m = Mapper(cfg)
    for d, c, T in indoor_data.frames:
        m.integrate(Frame(T_W_S=T, depth=d, rgb=c, K=indoor_data.K))
    slots = m.octree.alive_slots()
    ref = mesh.mesh_bricks(m.octree, slots, cfg.tsdf.min_weight_mesh, backend="torch", max_jump=jump)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got = mesh.mesh_bricks(m.octree, slots, cfg.tsdf.min_weight_mesh, backend="cpp", chunk=97, max_jump=jump)
    finally:
        torch.set_num_threads(old)
    assert ref.tri_vertices.shape[0] > 1000
    if jump != float("inf"):                                                 # the limit did remove cells
        assert ref.tri_vertices.shape[0] < mesh.mesh_bricks(m.octree, slots, cfg.tsdf.min_weight_mesh).tri_vertices.shape[0]
    assert_same_soup(ref, got)


def test_mapper_uses_the_compiled_mesher_and_stays_incremental(indoor_data):
    """update_mesh with the compiled mesher accumulates to the same triangles as a full extraction."""
    cfg = make_config(0.05, map__backend="cpp")
    m = Mapper(cfg)
    assert m._mesh_backend() == "cpp"
    for d, c, T in indoor_data.frames:
        m.integrate(Frame(T_W_S=T, depth=d, rgb=c, K=indoor_data.K))
        m.update_mesh()
    full = mesh.mesh_bricks(m.octree, m.octree.alive_slots(), cfg.tsdf.min_weight_mesh, backend="torch",
                            max_jump=m._mesh_max_jump())
    store = m.mesh_store()

    def corner_set(bm):
        return set(map(tuple, bm.tri_edge_keys.numpy().tolist()))

    assert corner_set(store) == corner_set(full)


def test_bad_inputs_raise_value_error():
    t = torch.zeros((2, 512), dtype=torch.float16)
    c = torch.zeros((2, 512, 3), dtype=torch.uint8)
    nb = torch.tensor([[0, 1, -1, -1, -1, -1, -1, -1]])
    org = torch.zeros((1, 3), dtype=torch.int64)
    native.mesh_bricks_cpp(t, t, c, nb, org, 0.05, 1.0)                       # well-formed: no error
    with pytest.raises(ValueError, match="nb rows"):
        native.mesh_bricks_cpp(t, t, c, nb + 5, org, 0.05, 1.0)
    with pytest.raises(ValueError, match="tsdf"):
        native.mesh_bricks_cpp(t.float(), t, c, nb, org, 0.05, 1.0)
    with pytest.raises(ValueError, match="origins_vox"):
        native.mesh_bricks_cpp(t, t, c, nb, torch.zeros((2, 3), dtype=torch.int64), 0.05, 1.0)
    with pytest.raises(ValueError, match="weight"):
        native.mesh_bricks_cpp(t, t[:1], c, nb, org, 0.05, 1.0)
    # Beyond the edge keys' range (once: 20-bit fields overflowed into each other, welding far apart
    # vertices together).
    from voxmap_ros.core.marching_cubes import KEY_COORD_MAX
    with pytest.raises(ValueError, match="edge keys"):
        native.mesh_bricks_cpp(t, t, c, nb, torch.tensor([[0, KEY_COORD_MAX - 4, 0]]), 0.05, 1.0)
    v, cols, keys, blk = native.mesh_bricks_cpp(t, t, None, nb[:0], org[:0], 0.05, 1.0)
    assert v.shape == (0, 3, 3) and cols.shape == (0, 3, 3) and keys.shape == (0, 3) and blk.shape == (0,)
