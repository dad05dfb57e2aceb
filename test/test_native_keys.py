"""Compiled key bookkeeping (kernels/cpu/keys.cpp) against the torch code it replaces."""
import pytest
import torch

from voxmap_ros.core import hashtable, morton, native

pytestmark = pytest.mark.skipif(not native.available(), reason=f"compiled kernels unavailable: "
                                                                f"{native.unavailable_reason()}")


def _torch_only(fn, *args):
    saved = dict(morton._cpu_kernels)
    morton.use_cpu_kernels(None, None)
    try:
        return fn(*args)
    finally:
        if saved:
            morton.use_cpu_kernels(saved["encode"], saved["decode"])


def test_morton_encode_decode_match_torch_bitwise():
    g = torch.Generator().manual_seed(0)
    coords = torch.randint(morton.COORD_MIN, morton.COORD_MAX + 1, (5000, 3), generator=g)
    coords[:3] = torch.tensor([[morton.COORD_MIN] * 3, [morton.COORD_MAX] * 3, [0, -1, 1]])
    levels = torch.randint(0, morton.MAX_LEVEL + 1, (5000,), generator=g)
    for lv in (0, 3, levels):
        want = _torch_only(morton.encode, coords, lv)
        got = native.morton_encode_cpp(coords.to(torch.int32), lv)
        assert torch.equal(got, want)
        c, level = native.morton_decode_cpp(got)
        wc, wl = _torch_only(morton.decode, want)
        assert torch.equal(c, wc) and torch.equal(level, wl) and torch.equal(c, coords)
    nc = coords[::2, :]                                   # a strided view is copied, not misread
    assert torch.equal(native.morton_encode_cpp(nc, 1), _torch_only(morton.encode, nc, 1))
    assert native.morton_encode_cpp(torch.zeros((0, 3), dtype=torch.int64), 0).shape == (0,)


def test_morton_wrappers_reject_bad_input():
    with pytest.raises(ValueError, match="shape"):
        native.morton_encode_cpp(torch.zeros((4, 2), dtype=torch.int64), 0)
    with pytest.raises(ValueError, match="dtype"):
        native.morton_decode_cpp(torch.zeros(4, dtype=torch.float32))


def _tables(cap_bits: int, n_keys: int, n_erase: int, seed: int):
    """The same insert / erase history on a torch table and on a compiled one."""
    g = torch.Generator().manual_seed(seed)
    tabs = []
    for kernels in ((None, None), (native.hash_find_cpp, native.hash_insert_absent_cpp)):
        t = hashtable._Table(1 << cap_bits, torch.device("cpu"))
        t.find_kernel, t.insert_kernel = kernels
        tabs.append(t)
    # Load ~0.45: probe chains, and several keys claiming one slot in the same round.
    keys = torch.unique(torch.randint(0, 1 << 40, (n_keys,), generator=g))
    keys = keys[torch.randperm(keys.numel(), generator=g)]
    half = keys.numel() // 2
    for t in tabs:
        t.insert_absent(keys[:half], torch.arange(half, dtype=torch.int32))
        t.erase_slots(t.find(keys[:n_erase]))                # tombstones for the second batch
        t.insert_absent(keys[half:], torch.arange(half, keys.numel(), dtype=torch.int32))
    return tabs, keys


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hash_insert_and_find_match_torch_bitwise(seed):
    (ref, fast), keys = _tables(cap_bits=12, n_keys=1800, n_erase=300, seed=seed)
    assert torch.equal(ref.keys, fast.keys) and torch.equal(ref.values, fast.values)
    assert (ref.live, ref.tombstones) == (fast.live, fast.tombstones)
    assert fast.tombstones < 300                          # some tombstones were reused
    probe = torch.cat([keys, torch.randint(0, 1 << 40, (500,))])
    assert torch.equal(ref.find(probe), fast.find(probe))
    assert bool((fast.find(keys[300:]) >= 0).all()) and bool((fast.find(keys[:300]) < 0).all())


def test_hash_table_with_kernels_matches_dict():
    table = hashtable.HashTable(64)
    table.use_kernels(native.hash_find_cpp, native.hash_insert_absent_cpp)
    g = torch.Generator().manual_seed(3)
    ref = {}
    for step in range(30):                                # grows and migrates several times
        ks = torch.randint(0, 5000, (200,), generator=g)
        table.insert(ks, (ks % 1000).to(torch.int32))
        for k in ks.tolist():
            ref.setdefault(k, k % 1000)
        gone = torch.randint(0, 5000, (50,), generator=g)
        table.erase(gone)
        for k in gone.tolist():
            ref.pop(k, None)
    probe = torch.arange(5000)
    got = table.lookup(probe)
    want = torch.tensor([ref.get(k, -1) for k in range(5000)], dtype=torch.int32)
    assert torch.equal(got, want) and len(table) == len(ref)


def test_morton_ancestors_match_torch_and_ancestor():
    g = torch.Generator().manual_seed(4)
    coords = torch.randint(morton.COORD_MIN, morton.COORD_MAX + 1, (3000, 3), generator=g)
    keys = _torch_only(morton.encode, coords, 0)
    want = _torch_only(morton.ancestors, keys, 6)
    assert torch.equal(native.morton_ancestors_cpp(keys, 6), want)
    for up in range(7):
        assert torch.equal(want[:, up], _torch_only(morton.ancestor, keys, up))
    c3, level3 = _torch_only(morton.decode, want[:, 3])
    assert torch.equal(c3, torch.div(coords, 8, rounding_mode="floor")) and bool((level3 == 3).all())
    with pytest.raises(ValueError, match="levels_up"):
        native.morton_ancestors_cpp(keys, -1)
