"""Index arithmetic over ragged ranges (row i covers counts[i] consecutive items), for the
vectorised torch paths. All tensors are (N,) int64 on any one device."""
from __future__ import annotations

import torch


def range_starts(counts: torch.Tensor) -> torch.Tensor:
    """Where each range starts when the ranges are laid end to end (exclusive prefix sum)."""
    return torch.cumsum(counts, 0) - counts


def rank_in_range(counts: torch.Tensor) -> torch.Tensor:
    """(sum(counts),): 0, 1, ..., counts[i] - 1 for each range i in turn."""
    total = int(counts.sum()) if counts.numel() else 0
    return torch.arange(total, device=counts.device) - torch.repeat_interleave(range_starts(counts), counts)


def expand_ranges(starts: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """(sum(counts),): starts[i], starts[i] + 1, ..., starts[i] + counts[i] - 1 for each i in turn."""
    return rank_in_range(counts) + torch.repeat_interleave(starts, counts)
