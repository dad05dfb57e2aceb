"""Ragged-range index helpers against plain Python loops."""
import torch

from voxmap_ros.core.ranges import expand_ranges, range_starts, rank_in_range


def test_ranges_match_python_loops():
    g = torch.Generator().manual_seed(0)
    counts = torch.randint(0, 5, (50,), generator=g)
    starts = torch.randint(0, 100, (50,), generator=g)
    c, s = counts.tolist(), starts.tolist()
    assert range_starts(counts).tolist() == [sum(c[:i]) for i in range(len(c))]
    assert rank_in_range(counts).tolist() == [k for n in c for k in range(n)]
    assert expand_ranges(starts, counts).tolist() == [a + k for a, n in zip(s, c) for k in range(n)]


def test_empty_ranges():
    e = torch.zeros(0, dtype=torch.int64)
    assert rank_in_range(e).numel() == 0 and expand_ranges(e, e).numel() == 0
    assert rank_in_range(torch.zeros(3, dtype=torch.int64)).numel() == 0
