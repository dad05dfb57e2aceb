"""Morton keys: round trips, tree arithmetic, Z-order, range checks."""
import numpy as np
import pytest
import torch

from voxmap_ros.core import morton

pytestmark = pytest.mark.usefixtures("single_thread")

N_RANDOM = 20_000


def _random_coords(n, lo=morton.COORD_MIN, hi=morton.COORD_MAX, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(lo, hi + 1, (n, 3), generator=g, dtype=torch.int64)


def _edge_coords():
    vals = [morton.COORD_MIN, morton.COORD_MIN + 1, -2, -1, 0, 1, 2, morton.COORD_MAX - 1, morton.COORD_MAX]
    g = torch.tensor(vals)
    return torch.cartesian_prod(g, g, g)


@pytest.mark.parametrize("level", [0, 1, 7, morton.MAX_LEVEL])
def test_encode_decode_round_trip_including_negative(level):
    c = torch.cat([_random_coords(N_RANDOM), _edge_coords()])
    assert bool((c < 0).any())
    keys = morton.encode(c, level)
    assert keys.dtype == torch.int64 and keys.shape == (c.shape[0],)
    assert bool((keys >= 0).all())                       # bit 63 clear: keys sort as signed int64
    c2, lv = morton.decode(keys)
    assert torch.equal(c2, c)
    assert bool((lv == level).all()) and torch.equal(morton.level_of(keys), lv)
    # Distinct coordinates give distinct keys.
    assert torch.unique(keys).numel() == torch.unique(c, dim=0).shape[0]


def test_int32_coords_and_per_key_levels():
    c = _random_coords(1000, -1000, 1000).to(torch.int32)
    lv = torch.randint(0, morton.MAX_LEVEL + 1, (1000,))
    c2, lv2 = morton.decode(morton.encode(c, lv))
    assert torch.equal(c2, c.long()) and torch.equal(lv2, lv)


def test_parent_children_child_index_consistency():
    c = _random_coords(5000, morton.COORD_MIN // 2, morton.COORD_MAX // 2, seed=1)
    for level in (1, 3):
        keys = morton.encode(c, level)
        kids = morton.children(keys)                             # (N, 8)
        assert kids.shape == (c.shape[0], 8)
        kc, klv = morton.decode(kids.reshape(-1))
        assert bool((klv == level - 1).all())
        # Every child's parent is the node; child_index is its column; the 8 children are the
        # 2x2x2 block 2c + {0,1}^3 in Morton order (x fastest).
        assert torch.equal(morton.parent(kids.reshape(-1)), keys.repeat_interleave(8))
        assert torch.equal(morton.child_index(kids.reshape(-1)), torch.arange(8).repeat(c.shape[0]))
        expect = c[:, None, :] * 2 + morton.CHILD_OFFSETS[None]
        assert torch.equal(kc.reshape(-1, 8, 3), expect)
        # Children of one parent are consecutive, increasing keys.
        assert bool((kids[:, 1:] > kids[:, :-1]).all())


def test_parent_is_floor_division_for_negative_coords():
    c = torch.tensor([[-1, -2, -3], [-8, 7, 0], [1, -1, 5]])
    pc, lv = morton.decode(morton.parent(morton.encode(c, 0)))
    assert torch.equal(pc, torch.div(c, 2, rounding_mode="floor")) and bool((lv == 1).all())


def test_ancestor_equals_repeated_parent():
    c = _random_coords(3000, seed=2)
    keys = morton.encode(c, 0)
    k = keys
    for up in range(1, 8):
        k = morton.parent(k)
        assert torch.equal(morton.ancestor(keys, up), k)
        ac, lv = morton.decode(k)
        assert torch.equal(ac, torch.div(c, 2 ** up, rounding_mode="floor")) and bool((lv == up).all())
    assert torch.equal(morton.ancestor(keys, 0), keys)


def test_neighbours():
    c = _random_coords(500, -5000, 5000, seed=3)
    keys = morton.encode(c, 2)
    nb = morton.neighbours(keys)
    assert nb.shape == (500, 26)
    nc, lv = morton.decode(nb.reshape(-1))
    d = nc.reshape(500, 26, 3) - c[:, None, :]
    assert bool((lv == 2).all())
    assert bool((d.abs().max(-1).values == 1).all())          # 26-neighbourhood, no self
    assert torch.unique(d.reshape(-1, 3), dim=0).shape[0] == 26
    face = torch.tensor([[1, 0, 0], [-1, 0, 0], [0, 0, 1]])
    nb6 = morton.neighbours(keys, face)
    assert torch.equal(morton.decode(nb6.reshape(-1))[0].reshape(500, 3, 3), c[:, None, :] + face[None])
    edge = morton.encode(torch.tensor([[morton.COORD_MAX, 0, morton.COORD_MIN]]), 0)
    with pytest.raises(ValueError, match="outside"):              # once: wrapped onto a level-1 key
        morton.neighbours(edge)
    assert morton.decode(morton.neighbours(edge, torch.tensor([[-1, 0, 1]])).reshape(-1))[0].tolist() == [
        [morton.COORD_MAX - 1, 0, morton.COORD_MIN + 1]]


def _zorder_key_python(x, y, z):
    """Independent Z-order: interleave the bits of the biased coordinates, z high, x low."""
    x, y, z = (v + morton.COORD_BIAS for v in (x, y, z))
    out = 0
    for b in range(morton.COORD_BITS - 1, -1, -1):
        out = (out << 3) | (((z >> b) & 1) << 2) | (((y >> b) & 1) << 1) | ((x >> b) & 1)
    return out


def test_sorting_keys_is_z_order():
    c = torch.cat([_random_coords(3000, seed=4), _random_coords(2000, -20, 20, seed=5)])
    keys = morton.encode(c, 0)
    order = torch.argsort(keys).numpy()
    ref = np.array([_zorder_key_python(*map(int, row)) for row in c.tolist()], dtype=object)
    ref_order = sorted(range(len(ref)), key=lambda i: (ref[i], i))
    # Equal coordinates (duplicates) may appear in either order; compare the sorted coordinate rows.
    assert np.array_equal(c.numpy()[order], c.numpy()[ref_order])


def test_z_order_of_a_2x2x2_block():
    c = morton.CHILD_OFFSETS.clone()
    perm = torch.randperm(8)
    keys = morton.encode(c[perm], 0)
    assert torch.equal(morton.decode(torch.sort(keys).values)[0], c)   # x fastest, then y, then z


@pytest.mark.parametrize("bad", [[morton.COORD_MAX + 1, 0, 0], [0, morton.COORD_MIN - 1, 0], [0, 0, 10 ** 9]])
def test_out_of_range_coords_raise(bad):
    with pytest.raises(ValueError, match="outside"):
        morton.check_coords(torch.tensor([bad, [0, 0, 0]]))
    morton.check_coords(torch.tensor([[morton.COORD_MAX, morton.COORD_MIN, 0]]))   # limits are fine


def test_bad_coords_shape_and_dtype_raise():
    with pytest.raises(ValueError, match="shape"):
        morton.check_coords(torch.zeros((4, 2), dtype=torch.int64))
    with pytest.raises(ValueError, match="int32 or int64"):
        morton.check_coords(torch.zeros((4, 3), dtype=torch.float32))


def test_children_of_a_brick_raise():
    with pytest.raises(ValueError, match="level-0"):
        morton.children(morton.encode(torch.zeros((1, 3), dtype=torch.int64), 0))


def test_key_arithmetic_matches_decode_encode_over_the_whole_range():
    """parent/children/ancestor/child_index work on the packed word without decoding; they must
    agree with the decode -> integer arithmetic -> encode definition, extremes included."""
    g = torch.Generator().manual_seed(3)
    c = torch.randint(morton.COORD_MIN, morton.COORD_MAX + 1, (50000, 3), generator=g)
    c = torch.cat([c, torch.tensor([[morton.COORD_MIN] * 3, [morton.COORD_MAX] * 3, [-1, 0, 1], [0, 0, 0]])])
    keys = morton.encode(c, 0)
    for up in range(0, 8):
        coords, level = morton.decode(morton.ancestor(keys, up))
        assert torch.equal(coords, c >> up) and bool((level == up).all())
    assert torch.equal(morton.parent(keys), morton.ancestor(keys, 1))
    for lv in (1, 4):
        node = morton.encode(c >> lv, lv)
        coords, level = morton.decode(morton.children(node).reshape(-1))
        expected = ((c >> lv)[:, None] * 2 + morton.CHILD_OFFSETS[None]).reshape(-1, 3)
        assert torch.equal(coords, expected) and bool((level == lv - 1).all())
    b = c & 1
    assert torch.equal(morton.child_index(keys), b[:, 0] | (b[:, 1] << 1) | (b[:, 2] << 2))
