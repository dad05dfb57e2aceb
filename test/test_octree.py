"""SparseVoxelOctree: bricks, parent summaries vs brute force, queries, pruning, clearing, sizes."""
import math
import sys

import numpy as np
import pytest
import torch

from voxmap_ros.core import morton
from voxmap_ros.core import octree as octree_mod
from voxmap_ros.core.octree import BRICK, BRICK_VOXELS, CORE_ATTRIBUTES, UNKNOWN_OCC, SparseVoxelOctree

pytestmark = pytest.mark.usefixtures("single_thread")

VOXEL_M = 0.05
LEVELS = 4
FREE_L = -2.0                 # log-odds of pruned free space
SUMMARY_TOL = 1e-6            # summaries are float32 copies of float16 voxel values: exact
MAX_CORE_BYTES_PER_VOXEL = 10  # tsdf + weight + colour budget


def _tree(levels=LEVELS, initial_bricks=16) -> SparseVoxelOctree:
    return SparseVoxelOctree(VOXEL_M, levels, "cpu", initial_bricks=initial_bricks, free_logodds=FREE_L)


def _alive_keys(o):
    s = o.alive_slots()
    return s, o.node_key[o.brick_node[s].long()]


def _brute_summaries(o: SparseVoxelOctree) -> dict[int, tuple[float, float, bool]]:
    """{node key: (max occ, min |tsdf|, observed)} for every parent level, from the bricks alone
    (no pruned regions in the trees this is used on)."""
    slots, keys = _alive_keys(o)
    occ = o.attrs["occ"][slots].float()
    w = o.attrs["weight"][slots].float()
    tsdf = o.attrs["tsdf"][slots].float()
    seen = (w > 0) | (occ != 0)
    b_occ = torch.where(seen, occ, torch.full_like(occ, UNKNOWN_OCC)).amax(1)
    b_tsdf = torch.where(w > 0, tsdf.abs(), torch.ones_like(tsdf)).amin(1)
    b_obs = seen.any(1)
    out = {}
    for level in range(1, o.levels + 1):
        anc = morton.ancestor(keys, level)
        for k in torch.unique(anc).tolist():
            m = anc == k
            out[k] = (float(b_occ[m].max()), float(b_tsdf[m].min()), bool(b_obs[m].any()))
    return out


def _check_summaries(o):
    ref = _brute_summaries(o)
    keys, ids = o.table.items()
    parents = morton.level_of(keys) >= 1
    got = {int(k): i for k, i in zip(keys[parents].tolist(), ids[parents].long().tolist())}
    assert set(got) == set(ref)                         # exactly the ancestors of live bricks
    for k, (mo, mt, ob) in ref.items():
        i = got[k]
        assert o.node_max_occ[i].item() == pytest.approx(mo, abs=SUMMARY_TOL) or mo == o.node_max_occ[i].item()
        assert o.node_min_abs_tsdf[i].item() == pytest.approx(mt, abs=SUMMARY_TOL)
        assert bool(o.node_observed[i]) == ob


def _random_coords(rng, n, span=12):
    return torch.from_numpy(rng.integers(-span, span, (n, 3)))


def test_slots_that_are_not_integers_are_refused():
    """Float slots would be truncated to other bricks and a bool mask read as slots 0 / 1: erase,
    summary refresh and the stale marks refuse them and change nothing."""
    o = _tree()
    o.allocate_bricks(torch.tensor([[0, 0, 0], [1, 0, 0], [2, 0, 0]]))
    n, stale = o.num_bricks, o.summaries_pending
    for bad in (torch.tensor([1.7]), torch.tensor([True, False, True])):
        for op in (o.erase_bricks, o.update_summaries, o.mark_stale, o.mark_parents_stale):
            with pytest.raises(ValueError, match="integer tensor"):
                op(bad)
    assert o.num_bricks == n and o.summaries_pending == stale
    o.erase_bricks(torch.tensor([1], dtype=torch.int32))          # any integer dtype is fine
    assert o.num_bricks == n - 1


def test_allocate_lookup_erase_bricks():
    o = _tree()
    rng = np.random.default_rng(0)
    c = _random_coords(rng, 400)
    slots, is_new = o.allocate_bricks(c)
    uniq = torch.unique(c, dim=0)
    assert int(is_new.sum()) == uniq.shape[0] == o.num_bricks
    assert o.num_voxels == o.num_bricks * BRICK_VOXELS
    # Same coordinates -> same slot; slots hold their coordinates; lookup agrees.
    assert torch.equal(o.brick_coord[slots].long(), c)
    assert torch.equal(o.lookup_bricks(c), slots)
    s2, new2 = o.allocate_bricks(c)
    assert torch.equal(s2, slots) and not bool(new2.any())
    # New bricks start at the fill values.
    assert bool((o.attrs["tsdf"][slots] == 1).all()) and bool((o.attrs["weight"][slots] == 0).all())
    # Erase half; lookups of erased give -1, of the rest their slot; slots get reused.
    gone = uniq[::2]
    o.erase_bricks(o.lookup_bricks(gone))
    assert bool((o.lookup_bricks(gone) == -1).all())
    kept = uniq[1::2]
    assert bool((o.lookup_bricks(kept) >= 0).all()) and o.num_bricks == kept.shape[0]
    s3, new3 = o.allocate_bricks(gone[:5])
    assert bool(new3.all()) and bool((o.attrs["weight"][s3] == 0).all())
    assert o.lookup_bricks(torch.tensor([[10 ** 5, 0, 0]])).item() == -1
    # Outside the key range nothing can be allocated: -1 too (neighbours of the map's edge bricks).
    edge = torch.tensor([[morton.COORD_MAX, 0, 0]])
    s_edge, _ = o.allocate_bricks(edge)
    probe = torch.tensor([[morton.COORD_MAX + 1, 0, 0], [morton.COORD_MAX, 0, 0], [0, morton.COORD_MIN - 1, 0]])
    assert o.lookup_bricks(probe).tolist() == [-1, int(s_edge), -1]
    with pytest.raises(ValueError, match="outside"):
        o.allocate_bricks(torch.tensor([[10 ** 6, 0, 0]]))
    with pytest.raises(ValueError, match="int32 or int64"):
        o.lookup_bricks(torch.tensor([[1.5, 0, 0]]))


def test_pools_grow_and_keep_contents():
    o = _tree(initial_bricks=16)
    c = torch.stack(torch.meshgrid(*(torch.arange(6),) * 3, indexing="ij"), -1).reshape(-1, 3)
    slots, _ = o.allocate_bricks(c[:10])
    o.attrs["occ"][slots] = torch.arange(10, dtype=torch.float16)[:, None]
    o.allocate_bricks(c)                                 # 216 bricks: pools grow several times
    s = o.lookup_bricks(c[:10])
    assert torch.equal(o.attrs["occ"][s][:, 0], torch.arange(10, dtype=torch.float16))
    assert o.num_bricks == 216


def _same_history(*octrees, rounds=6, seed=3):
    """Drive octrees through the same random allocations, writes and erasures."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(rounds):
        c = torch.randint(-12, 12, (150, 3), generator=g)
        gone = torch.randint(-12, 12, (30, 3), generator=g)
        for o in octrees:
            s, _ = o.allocate_bricks(c)
            o.attrs["occ"][s] = (c.sum(1) % 97).to(torch.float16)[:, None]
            o.attrs["color"][s] = (c % 256).to(torch.uint8)[:, None, :]
            found = o.lookup_bricks(gone)
            o.erase_bricks(found[found >= 0])


def _pool_tensors(o, alive_only=False):
    """Every pool tensor by name; with alive_only, voxel attributes only at alive bricks (the other
    rows are uninitialised until their brick is taken)."""
    names = SparseVoxelOctree.NODE_FIELDS + SparseVoxelOctree.BRICK_FIELDS
    alive = o.brick_alive if alive_only else slice(None)
    return {**{n: getattr(o, n) for n in names}, **{"attr:" + n: t[alive] for n, t in o.attrs.items()}}


def test_reserved_pools_grow_in_place_with_the_same_contents():
    plain = _tree(initial_bricks=16)
    reserved = SparseVoxelOctree(VOXEL_M, LEVELS, "cpu", initial_bricks=16, free_logodds=FREE_L, reserve_bricks=4096)
    start = {n: t.data_ptr() for n, t in _pool_tensors(reserved).items()}
    _same_history(plain, reserved)
    assert reserved.brick_alive.shape[0] > 16 * 8                 # grew several times
    for name, t in _pool_tensors(plain, True).items():
        assert torch.equal(_pool_tensors(reserved, True)[name], t), name
    for name, t in _pool_tensors(reserved).items():
        assert t.data_ptr() == start[name], f"{name} was copied"
    assert reserved.nbytes == plain.nbytes                       # capacity, not the reservation


def test_used_up_reservation_grows_by_a_copy_and_keeps_contents():
    plain = _tree(initial_bricks=16)
    reserved = SparseVoxelOctree(VOXEL_M, LEVELS, "cpu", initial_bricks=16, free_logodds=FREE_L, reserve_bricks=32)
    start = reserved.attrs["tsdf"].data_ptr()
    _same_history(plain, reserved)
    assert reserved.brick_alive.shape[0] > 32 and reserved.attrs["tsdf"].data_ptr() != start
    for name, t in _pool_tensors(plain, True).items():
        assert torch.equal(_pool_tensors(reserved, True)[name], t), name


def _distinct_coords(n: int, start: int = 0) -> torch.Tensor:
    i = torch.arange(start, start + n)
    return torch.stack([i % 64, (i // 64) % 64, i // 4096], 1)


def test_attribute_rows_are_written_ahead_of_the_bricks_in_use():
    o = SparseVoxelOctree(VOXEL_M, LEVELS, "cpu", initial_bricks=16, free_logodds=FREE_L, reserve_bricks=1 << 15)
    for start, n in [(0, 10), (10, 300), (310, 1), (311, 2000)]:
        slots, _ = o.allocate_bricks(_distinct_coords(n, start))
        top = int(o.alive_slots().max()) + 1
        assert o._committed_rows >= min(o.brick_alive.shape[0], top + octree_mod.COMMIT_AHEAD_BYTES // 4608)
        for name, spec in o.specs.items():       # rows written ahead hold the fill value, not garbage
            ahead = o.attrs[name][top:o._committed_rows].float()
            assert bool((ahead == float(spec.fill)).all()), name


@pytest.mark.parametrize("reserve", [0, 1 << 14])
def test_new_bricks_start_at_the_fill_values_in_reused_and_fresh_rows(reserve):
    o = SparseVoxelOctree(VOXEL_M, LEVELS, "cpu", initial_bricks=16, free_logodds=FREE_L, reserve_bricks=reserve)
    first, _ = o.allocate_bricks(_distinct_coords(1500))        # past the first rows written ahead
    for t in o.attrs.values():
        t[first] = 7
    o.erase_bricks(first[::3])
    slots, new = o.allocate_bricks(_distinct_coords(3000, 5000))   # the erased rows, then fresh ones
    assert bool(new.all()) and bool((slots < 1500).any()) and bool((slots >= 1500).any())
    for name, spec in o.specs.items():
        assert bool((o.attrs[name][slots].float() == float(spec.fill)).all()), name


@pytest.mark.skipif(sys.platform != "linux", reason="counts minor page faults with getrusage (Linux)")
def test_new_bricks_within_the_written_rows_take_no_page_faults():
    import resource
    o = SparseVoxelOctree(VOXEL_M, LEVELS, "cpu", initial_bricks=16, free_logodds=FREE_L, reserve_bricks=1 << 15)
    o.allocate_bricks(_distinct_coords(5000))    # pools grow to 8192 bricks; rows written up to there
    assert o.brick_alive.shape[0] == 8192         # no growth below: its copies would fault too
    coords = _distinct_coords(600, 5000)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    o.allocate_bricks(coords)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    # 600 fresh bricks' attribute rows span 600 * 4608 B = 675 pages: faulted in here without the
    # rows written ahead.
    assert faults < 150, faults


def test_out_of_range_brick_coords_raise_before_any_change():
    o = _tree()
    o.allocate_bricks(torch.tensor([[0, 0, 0]]))
    n = o.num_nodes
    with pytest.raises(ValueError, match="outside"):
        o.allocate_bricks(torch.tensor([[1, 1, 1], [morton.COORD_MAX + 1, 0, 0]]))
    assert o.num_nodes == n and o.num_bricks == 1


@pytest.mark.parametrize("combine", ["torch", "cpp"])
def test_parent_summaries_match_brute_force_under_incremental_updates(combine):
    rng = np.random.default_rng(1)
    o = _tree()
    if combine == "cpp":
        native = pytest.importorskip("voxmap_ros.core.native")
        if not native.available():
            pytest.skip(native.unavailable_reason())
        o.use_kernels(refresh_closure=native.refresh_closure_cpp)
    for r in range(25):
        slots, _ = o.allocate_bricks(_random_coords(rng, int(rng.integers(1, 40))))
        alive = o.alive_slots()
        touch = alive[torch.from_numpy(rng.choice(alive.numel(), min(alive.numel(), 30), replace=False))]
        touch = torch.unique(torch.cat([touch, slots]))
        for s in touch.tolist():
            v = torch.from_numpy(rng.choice(BRICK_VOXELS, int(rng.integers(0, 6)), replace=False))
            o.attrs["occ"][s, v] = torch.from_numpy(rng.uniform(-2, 3.5, v.numel())).half()
            o.attrs["weight"][s, v] = torch.from_numpy(rng.integers(0, 3, v.numel())).half()
            o.attrs["tsdf"][s, v] = torch.from_numpy(rng.uniform(-1, 1, v.numel())).half()
            if rng.random() < 0.3:                       # lower values too, not only raise them
                o.attrs["occ"][s] = 0
        o.update_summaries(touch)
        if r % 3 == 2:
            alive = o.alive_slots()
            o.erase_bricks(alive[torch.from_numpy(rng.choice(alive.numel(), alive.numel() // 4, replace=False))])
        _check_summaries(o)
    assert o.num_bricks > 50


def _fill_example(o):
    """Bricks (0..3, 0..3, 0) with one occupied voxel in brick (1, 0, 0) and free voxels elsewhere."""
    c = torch.stack(torch.meshgrid(torch.arange(4), torch.arange(4), torch.arange(1), indexing="ij"), -1).reshape(-1, 3)
    slots, _ = o.allocate_bricks(c)
    o.attrs["occ"][slots, :64] = -1.0                    # z = 0 layer of each brick observed free
    s1 = o.lookup_bricks(torch.tensor([[1, 0, 0]]))
    o.attrs["occ"][s1, 5] = 2.5                          # voxel (5, 0, 0) of brick (1, 0, 0)
    o.update_summaries(slots)
    return slots


def test_occupancy_at_levels():
    o = _tree()
    _fill_example(o)
    bm = BRICK * VOXEL_M
    vox = lambda i, j, k: torch.tensor([[(i + 0.5) * VOXEL_M, (j + 0.5) * VOXEL_M, (k + 0.5) * VOXEL_M]])
    l, k = o.occupancy_at(vox(13, 0, 0))                 # brick (1,0,0), local voxel (5, 0, 0)
    assert l.item() == pytest.approx(2.5) and bool(k)
    l, k = o.occupancy_at(vox(12, 0, 0))
    assert l.item() == pytest.approx(-1.0) and bool(k)
    l, k = o.occupancy_at(vox(12, 0, 3))                 # allocated but never observed
    assert l.item() == 0 and not bool(k)
    l, k = o.occupancy_at(torch.tensor([[-3.0, 0.1, 0.1]]))   # nothing there
    assert l.item() == 0 and not bool(k)
    # Level 1 = 2x2x2 bricks: the node holding bricks (0..1, 0..1, 0..1) sees the occupied voxel
    # anywhere inside it; the node of bricks (2..3, 0..1, *) only free space.
    l, k = o.occupancy_at(torch.tensor([[0.1, 1.5 * bm, 1.5 * bm]]), level=1)
    assert l.item() == pytest.approx(2.5) and bool(k)
    l, k = o.occupancy_at(torch.tensor([[2.5 * bm, 0.5 * bm, 0.1]]), level=1)
    assert l.item() == pytest.approx(-1.0) and bool(k)
    l, k = o.occupancy_at(torch.tensor([[3.5 * bm, 3.5 * bm, 0.1]]), level=2)
    assert l.item() == pytest.approx(2.5) and bool(k)
    l, k = o.occupancy_at(torch.tensor([[100.0, 0.0, 0.0]]), level=2)
    assert l.item() == 0 and not bool(k)
    # Far outside the key range (once: keys wrapped around onto the bricks near the origin).
    far = (morton.COORD_MAX + 1) * bm
    for lvl in (0, 1):
        l, k = o.occupancy_at(torch.tensor([[13.5 * VOXEL_M + 4 * far, 0.5 * VOXEL_M, 0.5 * VOXEL_M],
                                            [13.5 * VOXEL_M, 0.5 * VOXEL_M, 0.5 * VOXEL_M]]), level=lvl)
        assert not bool(k[0]) and l[0].item() == 0 and bool(k[1]) and l[1].item() == pytest.approx(2.5)
    for bad, match in ((torch.tensor([[math.nan, 0.0, 0.0]]), "finite"), (torch.zeros(3), r"\(N, 3\)")):
        with pytest.raises(ValueError, match=match):
            o.occupancy_at(bad)
    with pytest.raises(ValueError, match="level"):
        o.occupancy_at(torch.zeros((1, 3)), level=o.levels + 1)


def test_occupancy_at_matches_brute_force_random():
    rng = np.random.default_rng(3)
    o = _tree()
    slots, _ = o.allocate_bricks(_random_coords(rng, 60, span=4))
    n = slots.numel()
    o.attrs["occ"][slots] = torch.from_numpy(rng.choice([0.0, -1.5, 0.7, 3.0], (n, BRICK_VOXELS), p=[0.7, 0.2, 0.07, 0.03])).half()
    o.update_summaries(slots)
    pts = torch.from_numpy(rng.uniform(-5 * BRICK * VOXEL_M, 5 * BRICK * VOXEL_M, (3000, 3)))
    vox = torch.floor(pts / VOXEL_M).long()
    for level in (0, 1, 2):
        got, known = o.occupancy_at(pts, level)
        for i in range(0, 3000, 7):
            b = vox[i] >> 3
            if level == 0:
                s = o.lookup_bricks(b[None]).item()
                lv = vox[i] & 7
                val = 0.0 if s < 0 else float(o.attrs["occ"][s, int(lv[0] + 8 * lv[1] + 64 * lv[2])])
                assert got[i].item() == pytest.approx(val) and bool(known[i]) == (val != 0)
            else:
                lo = (b >> level) << level
                cells = torch.stack(torch.meshgrid(*[torch.arange(int(x), int(x) + (1 << level)) for x in lo],
                                                   indexing="ij"), -1).reshape(-1, 3)
                s = o.lookup_bricks(cells)
                s = s[s >= 0]
                vals = o.attrs["occ"][s].float()
                vals = vals[vals != 0]
                if vals.numel():
                    assert got[i].item() == pytest.approx(float(vals.max())) and bool(known[i])
                else:
                    assert got[i].item() == 0 and not bool(known[i])


def test_keys_in_morton_order():
    rng = np.random.default_rng(4)
    o = _tree()
    slots, _ = o.allocate_bricks(_random_coords(rng, 200, span=50))
    o.update_summaries(slots)
    for level in (0, 1, 3):
        k = o.keys_in_morton_order(level)
        assert bool((k[1:] > k[:-1]).all())
        all_k, _ = o.table.items()
        assert set(k.tolist()) == set(all_k[morton.level_of(all_k) == level].tolist())
    _, bk = _alive_keys(o)
    assert set(o.keys_in_morton_order(0).tolist()) == set(bk.tolist())


def test_bricks_in_aabb_brute_force():
    rng = np.random.default_rng(5)
    o = _tree()
    o.allocate_bricks(_random_coords(rng, 300, span=10))
    bm = BRICK * VOXEL_M
    for _ in range(20):
        a, b = rng.uniform(-12 * bm, 12 * bm, (2, 3))
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        got = set(o.bricks_in_aabb(lo, hi).tolist())
        s = o.alive_slots()
        blo = o.brick_coord[s].double().numpy() * bm
        ref = {int(x) for x, bl in zip(s.tolist(), blo) if np.all(bl + bm >= lo) and np.all(bl <= hi)}
        assert got == ref
    for lo, hi, match in (([1.0, 1.0, 1.0], [0.0, 2.0, 2.0], "must be <="), ([0.0, 0.0], [1.0, 1.0], r"\(3,\)"),
                          ([0.0, 0.0, math.nan], [1.0, 1.0, 1.0], "finite")):
        with pytest.raises(ValueError, match=match):
            o.bricks_in_aabb(lo, hi)


def _frustum_planes(K, T, W, H, near, far):
    """Inward unit normals n and offsets d (n.p + d >= 0 inside), camera frame, exact frustum: the
    planes through the optical centre and the back-projections of two image corners per edge."""
    Kinv = np.linalg.inv(K)
    ray = lambda u, v: Kinv @ np.array([u, v, 1.0])                   # noqa: E731
    tl, tr, bl, br = ray(-0.5, -0.5), ray(W - 0.5, -0.5), ray(-0.5, H - 0.5), ray(W - 0.5, H - 0.5)
    sides = [np.cross(tl, bl), np.cross(br, tr), np.cross(tr, tl), np.cross(bl, br)]   # left, right, top, bottom
    centre = ray((W - 1) / 2, (H - 1) / 2)
    sides = [sd if sd @ centre > 0 else -sd for sd in sides]
    n = np.array(sides + [[0, 0, 1], [0, 0, -1]], float)
    d = np.array([0, 0, 0, 0, -near, far], float)
    norm = np.linalg.norm(n, axis=1)
    return n / norm[:, None], d / norm


def test_bricks_in_frustum_brute_force():
    rng = np.random.default_rng(6)
    o = _tree()
    c = torch.stack(torch.meshgrid(*(torch.arange(-10, 10),) * 3, indexing="ij"), -1).reshape(-1, 3)
    o.allocate_bricks(c)
    s = o.alive_slots()
    bm = BRICK * VOXEL_M
    r = math.sqrt(3) * bm / 2
    # Samples on a 5x5x5 lattice of each brick (corners included).
    g = np.linspace(0, 1, 5)
    lattice = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3) * bm
    base = o.brick_coord[s].double().numpy() * bm
    from voxmap_ros.sim.sensors import look_at
    for i in range(6):
        W, H = 160, 120
        f = rng.uniform(60, 200)                         # wide and narrow fields of view
        K = np.array([[f, 0, (W - 1) / 2], [0, f, (H - 1) / 2], [0, 0, 1]])
        if i >= 3:
            K[0, 1] = rng.uniform(-60, 60)               # skewed pixels (once ignored: bricks lost)
        eye = rng.uniform(-2, 2, 3)
        T = look_at(eye, rng.uniform(-3, 3, 3))
        near, far = 0.2, rng.uniform(1.5, 4)
        got = set(o.bricks_in_frustum(K, T, W, H, near, far).tolist())
        n, d = _frustum_planes(K, T, W, H, near, far)
        pts = base[:, None, :] + lattice[None]                       # (B, 125, 3)
        pc = (pts - T[:3, 3]) @ T[:3, :3]
        inside = ((pc @ n.T + d) >= 0).all(-1).any(-1)              # some sample inside
        must = set(s[torch.from_numpy(inside)].tolist())
        assert must <= got, f"view {i}: {len(must - got)} bricks that meet the frustum are missing"
        # Nothing far from the frustum: every returned brick's bounding sphere meets every plane.
        cc = ((base + bm / 2) - T[:3, 3]) @ T[:3, :3]
        sd = cc @ n.T + d
        ok = (sd >= -r - 1e-9).all(1)
        bad = got - set(s[torch.from_numpy(ok)].tolist())
        assert not bad, f"view {i}: {len(bad)} bricks returned that lie outside the frustum"
        assert len(must) > 0
    K0, T0 = np.array([[100.0, 0, 80], [0, 100.0, 60], [0, 0, 1]]), np.eye(4)
    for args, match in (((np.diag([0.0, 100.0, 1.0]), T0, 160, 120, 0.1, 5.0), "fx, fy > 0"),
                        ((K0, np.zeros((4, 4)), 160, 120, 0.1, 5.0), "T_W_C"),
                        ((K0, T0, 0, 120, 0.1, 5.0), "at least 1x1"),
                        ((K0, T0, 160, 120, 5.0, 1.0), "near_m < far_m")):
        with pytest.raises(ValueError, match=match):
            o.bricks_in_frustum(*args)
    assert o.bricks_in_frustum(torch.as_tensor(K0), torch.as_tensor(T0), 160, 120, 0.1, 5.0).numel() > 0


def _free_block(o, lo, n=4):
    c = torch.stack(torch.meshgrid(*[torch.arange(lo[i], lo[i] + n) for i in range(3)], indexing="ij"), -1).reshape(-1, 3)
    slots, _ = o.allocate_bricks(c)
    o.attrs["occ"][slots] = FREE_L
    o.attrs["weight"][slots] = 1.0
    o.attrs["tsdf"][slots] = 1.0
    o.update_summaries(slots)
    return c


def _free_bits_cover_no_node(o):
    """Invariant: a child marked pruned-free in its parent has no node of its own."""
    keys, ids = o.table.items()
    m = o.node_free_mask[ids.long()].long()
    sel = m != 0
    if not bool(sel.any()):
        return True
    kids = morton.children(keys[sel])
    bits = ((m[sel][:, None] >> torch.arange(8)) & 1).bool()
    return not bool(o.table.contains(kids[bits]).any())


def test_prune_free_collapses_and_still_answers_free():
    o = _tree()
    c = _free_block(o, (0, 0, 0), 4)                     # 64 free bricks = one full level-2 node
    occ_c = torch.tensor([[6, 6, 6]])
    s_occ, _ = o.allocate_bricks(occ_c)
    o.attrs["occ"][s_occ, 0] = 3.0
    o.attrs["weight"][s_occ, 0] = 1.0
    o.attrs["tsdf"][s_occ, 0] = 0.0
    o.update_summaries(s_occ)
    nodes_before = o.num_nodes
    removed = o.prune_free(FREE_L + 1e-3)
    assert removed == 64 and o.num_bricks == 1
    assert o.num_nodes < nodes_before - 64               # level-1 nodes collapsed as well
    assert _free_bits_cover_no_node(o)
    # No level-1 node is left inside the pruned block: it collapsed into its level-2 parent's bit.
    l1 = morton.encode(torch.tensor([[0, 0, 0], [1, 1, 1]]), 1)
    assert not bool(o.table.contains(l1).any())
    centres = (c.double() + 0.5) * BRICK * VOXEL_M
    for level in (0, 1, 2):
        l, k = o.occupancy_at(centres, level)
        assert bool(k.all()) and torch.allclose(l, torch.full_like(l, FREE_L)), level
    # The occupied brick is unaffected; the level-3 summary sees both.
    l, k = o.occupancy_at((occ_c.double() * BRICK + 0.5) * VOXEL_M, 0)
    assert l.item() == pytest.approx(3.0) and bool(k)
    l, k = o.occupancy_at(centres[:1], 3)
    assert l.item() == pytest.approx(3.0) and bool(k)
    # Outside the block: unknown.
    l, k = o.occupancy_at(torch.tensor([[-1.0, -1.0, -1.0]]), 0)
    assert not bool(k)


def test_bricks_with_surface_are_not_pruned():
    o = _tree()
    _free_block(o, (0, 0, 0), 2)
    s = o.lookup_bricks(torch.tensor([[1, 1, 1]]))
    o.attrs["tsdf"][s, 7] = 0.2                         # a surface nearby: keep it
    assert o.prune_free(FREE_L + 1e-3) == 7
    assert o.num_bricks == 1


def test_reobserving_pruned_region_reexpands_with_free_occupancy():
    o = _tree()
    c = _free_block(o, (0, 0, 0), 4)
    assert o.prune_free(FREE_L + 1e-3) == 64
    # Re-observe two sibling bricks (same level-1 parent) and one elsewhere in the block, at once.
    again = torch.tensor([[0, 0, 0], [1, 0, 0], [3, 2, 1]])
    slots, is_new = o.allocate_bricks(again)
    assert bool(is_new.all())
    assert bool((o.attrs["occ"][slots].float() == FREE_L).all())        # free, not unknown
    assert bool((o.attrs["weight"][slots] == 0).all())
    o.update_summaries(slots)
    assert _free_bits_cover_no_node(o)
    # The rest of the block still answers free at every level; the new bricks too.
    centres = (c.double() + 0.5) * BRICK * VOXEL_M
    for level in (0, 1, 2):
        l, k = o.occupancy_at(centres, level)
        assert bool(k.all()) and torch.allclose(l, torch.full_like(l, FREE_L)), level
    # Marking one voxel occupied in a re-expanded brick shows up in the summaries above it.
    o.attrs["occ"][slots[0], 0] = 2.0
    o.update_summaries(slots[:1])
    l, k = o.occupancy_at(centres[:1], 2)
    assert l.item() == pytest.approx(2.0)
    # Erasing the re-expanded bricks (e.g. clearing) must not leave them marked free.
    o.erase_bricks(slots)
    l, k = o.occupancy_at((again.double() + 0.5) * BRICK * VOXEL_M, 0)
    assert not bool(k.any())


def test_clear_outside_radius():
    o = _tree()
    c = torch.stack(torch.meshgrid(*(torch.arange(-6, 6),) * 3, indexing="ij"), -1).reshape(-1, 3)
    o.allocate_bricks(c)
    centre = torch.tensor([0.3, -0.2, 0.1])
    radius = 1.0
    centres = (c.double() + 0.5) * BRICK * VOXEL_M
    far = (centres - centre.double()).norm(dim=1) > radius
    n = o.clear_outside_radius(centre, radius)
    assert n == int(far.sum()) > 0
    assert bool((o.lookup_bricks(c[far]) == -1).all()) and bool((o.lookup_bricks(c[~far]) >= 0).all())
    assert o.num_bricks == int((~far).sum())


def test_nbytes_is_sum_of_tensors():
    o = _tree()
    o.allocate_bricks(torch.randint(-20, 20, (300, 3)))
    o.update_summaries(o.alive_slots())
    total = sum(v.nbytes for v in vars(o).values() if isinstance(v, torch.Tensor))
    total += sum(t.nbytes for t in o.attrs.values())
    for t in (o.table._new, o.table._old):
        if t is not None:
            total += t.keys.nbytes + t.values.nbytes
    assert o.nbytes == total


def test_core_attributes_fit_the_byte_budget():
    specs = {s.name: s for s in CORE_ATTRIBUTES}
    per_voxel = sum(specs[n].bytes_per_voxel for n in ("tsdf", "weight", "color"))
    assert per_voxel <= MAX_CORE_BYTES_PER_VOXEL
    o = _tree()
    per_voxel_stored = sum(o.attrs[n].element_size() * o.attrs[n][0, 0].numel() for n in ("tsdf", "weight", "color"))
    assert per_voxel_stored == per_voxel


def test_register_attribute_moves_with_bricks():
    from voxmap_ros.core.octree import AttributeSpec
    o = _tree()
    s, _ = o.allocate_bricks(torch.tensor([[0, 0, 0]]))
    o.register_attribute(AttributeSpec("label", torch.int16, (), -1))
    assert bool((o.attrs["label"][s] == -1).all())
    with pytest.raises(ValueError, match="already registered"):
        o.register_attribute(AttributeSpec("label", torch.int32, (), -1))
    o.allocate_bricks(torch.randint(0, 30, (200, 3)))            # grows the pools
    assert o.attrs["label"].shape[0] == o.brick_alive.shape[0]


def test_bad_constructor_args():
    with pytest.raises(ValueError, match="voxel_size_m"):
        SparseVoxelOctree(0.0)
    with pytest.raises(ValueError, match="levels"):
        SparseVoxelOctree(0.05, levels=0)


@pytest.mark.parametrize("refuse_from", [0, 5])
def test_refused_reservation_falls_back_to_copying(monkeypatch, refuse_from):
    """A reservation the OS refuses (from the first pool, or part-way through) leaves a working
    octree that grows by copying, with the same contents as one that never reserved."""
    real_empty, calls = torch.empty, []

    def empty(*shape, **kw):
        dims = shape[0] if len(shape) == 1 and isinstance(shape[0], tuple) else shape
        if dims and dims[0] >= 1000:                       # only the reservations are this large
            calls.append(dims)
            if len(calls) > refuse_from:
                raise RuntimeError("refused")
        return real_empty(*shape, **kw)

    monkeypatch.setattr(torch, "empty", empty)
    reserved = SparseVoxelOctree(VOXEL_M, LEVELS, "cpu", initial_bricks=16, free_logodds=FREE_L, reserve_bricks=1000)
    monkeypatch.setattr(torch, "empty", real_empty)
    assert reserved.reserve_bricks == 0 and len(calls) == refuse_from + 1
    plain = _tree(initial_bricks=16)
    _same_history(plain, reserved)
    for name, t in _pool_tensors(plain, True).items():
        assert torch.equal(_pool_tensors(reserved, True)[name], t), name


def test_deepcopy_copies_capacity_not_the_reservation():
    import copy
    o = SparseVoxelOctree(VOXEL_M, LEVELS, "cpu", initial_bricks=16, free_logodds=FREE_L, reserve_bricks=4096)
    _same_history(o, rounds=2)
    c = copy.deepcopy(o)
    for name, t in _pool_tensors(o).items():
        ct = _pool_tensors(c)[name]
        assert ct.untyped_storage().nbytes() == t.nbytes, f"{name} copied its whole reserved buffer"
    for name, t in _pool_tensors(o, True).items():
        assert torch.equal(_pool_tensors(c, True)[name], t), name
    _same_history(o, c, rounds=3, seed=4)                   # both keep working, independently
    for name, t in _pool_tensors(o, True).items():
        assert torch.equal(_pool_tensors(c, True)[name], t), name


def test_clearing_forgets_pruned_free_space_beyond_the_radius():
    """Pruned space lives in free bits of parent nodes; beyond the radius it must go with the bricks,
    or a map driving along a street keeps answering 'free' (and keeps nodes) behind it for ever."""
    o = _tree()
    near = _free_block(o, (0, 0, 0), 4)                       # one level-2 cube at the origin
    far = _free_block(o, (16, 0, 0), 4)                      # another one 16 bricks along x
    assert o.prune_free(FREE_L + 1e-3) == 128 and o.num_bricks == 0
    far_centres = (far.double() + 0.5) * BRICK * VOXEL_M
    near_centres = (near.double() + 0.5) * BRICK * VOXEL_M
    assert bool(o.occupancy_at(far_centres, 0)[1].all())
    nodes_before = o.num_nodes
    sensor = near_centres.mean(0)
    radius = float((far_centres.mean(0) - sensor).norm()) / 2           # between the two cubes' centres
    o.clear_outside_radius(sensor.float(), radius)
    assert not bool(o.occupancy_at(far_centres, 0)[1].any())             # unknown now, at every level
    assert not bool(o.occupancy_at(far_centres, 2)[1].any())
    l, k = o.occupancy_at(near_centres, 0)                             # the near cube is still free
    assert bool(k.all()) and torch.allclose(l, torch.full_like(l, FREE_L))
    assert o.num_nodes < nodes_before and _free_bits_cover_no_node(o)


def test_a_new_free_value_reaches_every_summary_above_pruned_space():
    """free_logodds changes with the occupancy clamp (Mapper.set_config): parents must follow."""
    o = _tree()
    c = _free_block(o, (0, 0, 0), 2)                           # a level-1 cube of free bricks
    s_keep, _ = o.allocate_bricks(torch.tensor([[2, 0, 0]]))    # and a neighbour not quite at the clamp
    o.attrs["occ"][s_keep] = FREE_L + 0.5
    o.update_summaries(s_keep)
    assert o.prune_free(FREE_L + 1e-3) == 8
    o.free_logodds = FREE_L / 2
    o.refresh_free_summaries()
    centre = (c[:1].double() + 0.5) * BRICK * VOXEL_M
    for level in range(o.levels + 1):       # max over the cube: the new free value, above the neighbour's
        l, k = o.occupancy_at(centre, level)
        assert bool(k) and l.item() == pytest.approx(FREE_L / 2, abs=1e-3), level


def test_slot_minus_one_from_lookup_erases_nothing():
    o = _tree()
    o.allocate_bricks(torch.tensor([[0, 0, 0], [1, 0, 0]]))
    missing = o.lookup_bricks(torch.tensor([[5, 5, 5]]))
    assert missing.tolist() == [-1]
    o.erase_bricks(missing)
    o.update_summaries(missing)
    assert o.num_bricks == 2 and bool((o.lookup_bricks(torch.tensor([[0, 0, 0], [1, 0, 0]])) >= 0).all())
    slot, _ = o.allocate_bricks(torch.tensor([[7, 7, 7]]))     # the free list was not given -1
    assert int(slot) >= 0 and o.lookup_bricks(torch.tensor([[7, 7, 7]])).tolist() == slot.tolist()
    with pytest.raises(ValueError, match="beyond the pool"):
        o.erase_bricks(torch.tensor([o.brick_alive.shape[0]]))
    assert o.num_bricks == 3


@pytest.mark.parametrize("coords", [torch.tensor([[-0.7, 1.9, 2.5]]), torch.tensor([[1, 2, 3]], dtype=torch.int16),
                                    torch.tensor([[True, False, True]])])
def test_allocate_refuses_coordinates_that_are_not_int32_or_int64(coords):
    o = _tree()
    with pytest.raises(ValueError, match="int32 or int64"):
        o.allocate_bricks(coords)
    assert o.num_bricks == 0


def test_a_brick_allocated_in_pruned_space_reads_free_at_every_level():
    """Without any summary refresh by the caller: the new brick's parents, created when the pruned
    node is expanded, must summarise it as free, not unknown."""
    o = _tree()
    _free_block(o, (0, 0, 0), 4)
    assert o.prune_free(FREE_L + 1e-3) == 64
    o.allocate_bricks(torch.tensor([[0, 0, 0]]))
    centre = torch.tensor([[0.5, 0.5, 0.5]], dtype=torch.float64) * BRICK * VOXEL_M
    for level in range(o.levels + 1):
        l, k = o.occupancy_at(centre, level)
        assert bool(k.all()) and l.item() == pytest.approx(FREE_L), level


@pytest.mark.parametrize("threshold", [0.0, 0.5, float("nan")])
def test_pruning_needs_a_free_threshold(threshold):
    """At a log-odds threshold >= 0, bricks never observed (occupancy 0) would be pruned as free."""
    o = _tree()
    o.allocate_bricks(torch.tensor([[0, 0, 0]]))
    with pytest.raises(ValueError, match="negative log-odds"):
        o.prune_free(threshold)
    assert o.num_bricks == 1
