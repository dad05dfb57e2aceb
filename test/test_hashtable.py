"""Incremental hash table: against a dict oracle, growth with bounded per-call work, bad input."""
import numpy as np
import pytest
import torch

from voxmap_ros.core import hashtable
from voxmap_ros.core.hashtable import HashTable

pytestmark = pytest.mark.usefixtures("single_thread")

ROUNDS = 300
# Per-call migration bound (slots of the old table scanned by one call), as documented by
# hashtable.py: max(r * keys in the call, MIN_SLICE), r = 2 while growing, <= 4 while a same-size
# table replaces one full of tombstones. Independent of the table size.
MIGRATE_PER_KEY = 2
CLEANUP_PER_KEY = 4
MIN_SLICE = 4096


def _check_against(table: HashTable, oracle: dict, probe: torch.Tensor) -> None:
    got = table.lookup(probe)
    want = torch.tensor([oracle.get(int(k), -1) for k in probe.tolist()], dtype=torch.int32)
    assert torch.equal(got, want)
    assert len(table) == len(oracle)
    k, v = table.items()
    assert k.numel() == len(oracle) == torch.unique(k).numel()
    assert {int(a): int(b) for a, b in zip(k.tolist(), v.tolist())} == oracle


class MigrationMeter:
    """Counts the old-table slots each public call scans, by wrapping HashTable._migrate."""

    def __init__(self, table: HashTable):
        self.table, self.slots = table, 0
        inner = table._migrate

        def wrapped(n_slots):
            before_old, before = table._old, table._cursor
            inner(n_slots)
            if before_old is not None:
                after = before_old.capacity if table._old is not before_old else table._cursor
                self.slots += after - before

        table._migrate = wrapped

    def take(self) -> int:
        s, self.slots = self.slots, 0
        return s


def test_random_rounds_against_dict_oracle():
    rng = np.random.default_rng(0)
    table = HashTable(capacity=64)               # small, so it grows and migrates many times
    oracle: dict[int, int] = {}
    universe = rng.choice(2 ** 40, size=6000, replace=False).astype(np.int64)
    saw_migrating = saw_tombstone_reuse = False
    next_val = 0
    for r in range(ROUNDS):
        n = int(rng.integers(1, 200))
        keys = torch.from_numpy(rng.choice(universe, size=n))       # duplicates within a batch
        op = rng.random()
        if op < 0.15:                 # the allocation path's insert of keys it has just found absent
            fresh = [k for k in dict.fromkeys(keys.tolist()) if k not in oracle]
            vals = torch.arange(next_val, next_val + len(fresh), dtype=torch.int32)
            next_val += len(fresh)
            table.insert_new(torch.tensor(fresh, dtype=torch.int64), vals)
            oracle.update(zip(fresh, vals.tolist()))
        elif op < 0.6:
            vals = torch.arange(next_val, next_val + n, dtype=torch.int32)
            next_val += n
            tomb_before = table._new.tombstones
            is_new = table.insert(keys, vals)
            saw_tombstone_reuse |= table._new.tombstones < tomb_before
            expect_new = np.zeros(n, bool)
            for i, k in enumerate(keys.tolist()):
                if k not in oracle:
                    oracle[k] = int(vals[i])            # first occurrence wins
                    expect_new[i] = True
            assert np.array_equal(is_new.numpy(), expect_new)
        elif op < 0.9:
            found = table.erase(keys)
            uk = torch.unique(keys)
            assert found.shape == uk.shape
            assert np.array_equal(found.numpy(), np.array([k in oracle for k in uk.tolist()]))
            for k in uk.tolist():
                oracle.pop(k, None)
        else:
            present = [k for k in keys.tolist() if k in oracle]
            new_vals = torch.full((n,), -7 - r, dtype=torch.int32)
            table.update_values(keys, new_vals)
            for k in present:
                oracle[k] = -7 - r
        saw_migrating |= table.migrating
        probe = torch.from_numpy(np.concatenate([rng.choice(universe, 300), rng.integers(0, 2 ** 40, 50)]))
        _check_against(table, oracle, probe)
    assert saw_migrating and saw_tombstone_reuse


def test_lookups_correct_while_migrating_and_work_per_call_bounded():
    rng = np.random.default_rng(1)
    table = HashTable(capacity=1 << 10)
    meter = MigrationMeter(table)
    oracle = {}
    keys_all = torch.from_numpy(rng.choice(2 ** 50, size=400_000, replace=False).astype(np.int64))
    pos, checks_while_migrating, growths = 0, 0, 0
    while pos < keys_all.numel():
        batch = int(rng.choice([1, 7, 100, 1000, 5000]))
        k = keys_all[pos:pos + batch]
        pos += batch
        cap_before = table._new.capacity
        table.insert(k, torch.arange(k.numel(), dtype=torch.int32))
        growths += table._new.capacity != cap_before
        oracle.update({int(x): i for i, x in enumerate(k.tolist())})
        scanned = meter.take()
        assert scanned <= max(MIGRATE_PER_KEY * batch, MIN_SLICE), (batch, scanned, table._new.capacity)
        if table.migrating:
            checks_while_migrating += 1
            probe = keys_all[torch.from_numpy(rng.integers(0, pos, 200))]
            got = table.lookup(probe)
            assert torch.equal(got, torch.tensor([oracle[int(x)] for x in probe.tolist()], dtype=torch.int32))
            assert bool((table.lookup(keys_all[pos:pos + 100]) == -1).all())
    assert growths >= 3 and checks_while_migrating > 10
    assert len(table) == keys_all.numel()


def test_work_per_call_bounded_with_erase_churn():
    """Tombstone clean-up (a migration to a table of the same size) must not end in one call
    that drains the whole old table: fill half, erase most (tombstones > 1/4 start a clean-up),
    then insert steadily until the table has to grow again."""
    rng = np.random.default_rng(2)
    table = HashTable(capacity=1 << 16)
    meter = MigrationMeter(table)
    keys = torch.from_numpy(rng.choice(2 ** 50, size=100_000, replace=False).astype(np.int64))
    table.insert(keys[:30_000], torch.zeros(30_000, dtype=torch.int32))
    assert not table.migrating
    table.erase(keys[:16_000])                               # 16,000 tombstones: below 1/4
    assert not table.migrating
    table.erase(keys[16_000:16_500])
    assert table.migrating                                   # clean-up started
    assert meter.take() <= max(CLEANUP_PER_KEY * 500, MIN_SLICE)
    pos, cap0, grew = 30_000, table._new.capacity, False
    while pos < keys.numel() and not grew:
        batch = 2000
        table.insert(keys[pos:pos + batch], torch.ones(batch, dtype=torch.int32))
        pos += batch
        assert meter.take() <= max(CLEANUP_PER_KEY * batch, MIN_SLICE), (pos, table._new.capacity)
        grew = table._new.capacity > cap0
    assert grew
    stored, _ = table.items()
    assert set(stored.tolist()) == set(keys[16_500:pos].tolist())


def test_cpu_device_and_dtypes():
    t = HashTable(device="cpu")
    k = torch.tensor([5, 9, 5], dtype=torch.int64)
    is_new = t.insert(k, torch.tensor([1, 2, 3], dtype=torch.int32))
    assert is_new.tolist() == [True, True, False]
    out = t.lookup(torch.tensor([5, 9, 10]))
    assert out.dtype == torch.int32 and out.device.type == "cpu" and out.tolist() == [1, 2, -1]
    assert t.lookup(torch.zeros(0, dtype=torch.int64)).shape == (0,)


@pytest.mark.parametrize("keys", [torch.tensor([1, 2], dtype=torch.int32), torch.tensor([1.0, 2.0]),
                                  torch.tensor([[1, 2]], dtype=torch.int64), np.array([1, 2]), [1, 2]])
def test_bad_keys_raise(keys):
    t = HashTable()
    for call in (lambda: t.lookup(keys), lambda: t.erase(keys),
                 lambda: t.insert(keys, torch.zeros(2, dtype=torch.int32))):
        with pytest.raises(ValueError, match="int64"):
            call()
    assert len(t) == 0


def test_keys_on_another_device_raise():
    t = HashTable(device="cpu")
    with pytest.raises(ValueError, match="meta"):
        t.lookup(torch.empty(3, dtype=torch.int64, device="meta"))


def test_values_shape_mismatch_raises():
    t = HashTable()
    with pytest.raises(ValueError, match="shape"):
        t.insert(torch.tensor([1, 2, 3]), torch.zeros(2, dtype=torch.int32))
    assert len(t) == 0


def test_negative_keys_raise_and_change_nothing():
    """EMPTY (-1) and TOMBSTONE (-2) are the table's own marks: a negative key would match an empty
    slot on lookup and be written as a tombstone on insert."""
    t = HashTable()
    t.insert(torch.tensor([3, 4]), torch.tensor([1, 2], dtype=torch.int32))
    bad = torch.tensor([5, -1, -2])
    for call in (lambda: t.lookup(bad), lambda: t.contains(bad), lambda: t.erase(bad),
                 lambda: t.insert(bad, torch.zeros(3, dtype=torch.int32))):
        with pytest.raises(ValueError, match=">= 0"):
            call()
    keys, values = t.items()
    assert len(t) == 2 and sorted(keys.tolist()) == [3, 4]
