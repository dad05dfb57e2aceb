"""Octree node keys: (level, x, y, z) <-> one int64, Morton order within a level.

Layout of a key (bit 63 is always 0, so keys sort as signed int64):
    bits 57..60  level (0 = brick, 1.. = parents)
    bits  0..56  Morton interleave of (x, y, z) + COORD_BIAS, 19 bits each (x in the lowest bit)
x, y, z are node coordinates at that level: a level-L node spans 2^L bricks per axis and its
coordinates are floor(brick_coord / 2^L). Sorting keys of one level gives Morton (Z-) order.

All functions take and return torch tensors on any device; they never loop in Python. encode and
decode use compiled twins for CPU tensors once `use_cpu_kernels` installed them (bitwise equal,
one call instead of ~40 tensor ops; see kernels/cpu/keys.cpp for why that matters).
"""
from __future__ import annotations

import torch

COORD_BITS = 19
COORD_BIAS = 1 << (COORD_BITS - 1)          # coordinates in [-2^18, 2^18) are representable
COORD_MIN, COORD_MAX = -COORD_BIAS, COORD_BIAS - 1
LEVEL_SHIFT = 3 * COORD_BITS                # 57
MAX_LEVEL = 15
_MORTON_MASK = (1 << LEVEL_SHIFT) - 1

# Offsets of the 8 children of a node, in Morton order (x fastest), shape (8, 3).
CHILD_OFFSETS = torch.tensor([[i & 1, (i >> 1) & 1, (i >> 2) & 1] for i in range(8)], dtype=torch.int64)
# Offsets of the 26 neighbours of a node, shape (26, 3).
NEIGHBOUR_OFFSETS = torch.tensor([[dx, dy, dz] for dz in (-1, 0, 1) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                                  if (dx, dy, dz) != (0, 0, 0)], dtype=torch.int64)


_cpu_kernels: dict = {}


def use_cpu_kernels(encode_fn=None, decode_fn=None, ancestors_fn=None) -> None:
    """Install compiled twins of encode / decode / ancestors (signatures of
    native.morton_encode_cpp / morton_decode_cpp / morton_ancestors_cpp) for CPU tensors; None =
    pure torch. Process-wide: the results are equal."""
    _cpu_kernels.clear()
    if encode_fn is not None and decode_fn is not None and ancestors_fn is not None:
        _cpu_kernels.update(encode=encode_fn, decode=decode_fn, ancestors=ancestors_fn)


def _spread3(v: torch.Tensor) -> torch.Tensor:
    """Insert two zero bits between each of the low 21 bits of v (int64)."""
    v = v & 0x1FFFFF
    v = (v | (v << 32)) & 0x1F00000000FFFF
    v = (v | (v << 16)) & 0x1F0000FF0000FF
    v = (v | (v << 8)) & 0x100F00F00F00F00F
    v = (v | (v << 4)) & 0x10C30C30C30C30C3
    v = (v | (v << 2)) & 0x1249249249249249
    return v


def _compact3(v: torch.Tensor) -> torch.Tensor:
    """Inverse of _spread3: gather every third bit of v (int64, top bit clear) into the low bits."""
    v = v & 0x1249249249249249
    v = (v | (v >> 2)) & 0x10C30C30C30C30C3
    v = (v | (v >> 4)) & 0x100F00F00F00F00F
    v = (v | (v >> 8)) & 0x1F0000FF0000FF
    v = (v | (v >> 16)) & 0x1F00000000FFFF
    v = (v | (v >> 32)) & 0x1FFFFF
    return v


def check_coords(coords: torch.Tensor) -> None:
    """Raise ValueError unless coords (N, 3) int32/int64 are inside the representable range."""
    if coords.ndim != 2 or coords.shape[1] != 3:
        raise ValueError(f"coords must have shape (N, 3), got {tuple(coords.shape)}")
    if coords.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"coords must be int32 or int64, got {coords.dtype}")
    if coords.numel() and (int(coords.min()) < COORD_MIN or int(coords.max()) > COORD_MAX):
        raise ValueError(f"coords outside [{COORD_MIN}, {COORD_MAX}] (the map is too large for the "
                         f"voxel size): min {int(coords.min())}, max {int(coords.max())}")


def encode(coords: torch.Tensor, level: int | torch.Tensor = 0) -> torch.Tensor:
    """Pack node coordinates into keys.

    coords: (N, 3) int32/int64 node coordinates at `level`, any device (range not checked here:
    call check_coords on untrusted input). level: int or (N,) int64. Returns (N,) int64.
    """
    if _cpu_kernels and coords.device.type == "cpu":
        return _cpu_kernels["encode"](coords, level)
    c = coords.to(torch.int64) + COORD_BIAS
    m = _spread3(c[:, 0]) | (_spread3(c[:, 1]) << 1) | (_spread3(c[:, 2]) << 2)
    lv = level if isinstance(level, torch.Tensor) else torch.full_like(m, int(level))
    return m | (lv.to(torch.int64) << LEVEL_SHIFT)


def decode(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unpack keys (N,) int64 into (coords (N, 3) int64, level (N,) int64), same device."""
    if _cpu_kernels and keys.device.type == "cpu":
        return _cpu_kernels["decode"](keys)
    m = keys & _MORTON_MASK
    coords = torch.stack([_compact3(m), _compact3(m >> 1), _compact3(m >> 2)], dim=1) - COORD_BIAS
    return coords, keys >> LEVEL_SHIFT


def level_of(keys: torch.Tensor) -> torch.Tensor:
    """(N,) int64 keys -> (N,) int64 levels."""
    return keys >> LEVEL_SHIFT


# Key arithmetic without decoding. A biased coordinate b = c + 2^18 (19 bits) of a node has the
# parent's biased coordinate floor(c / 2) + 2^18 = (b >> 1) + 2^17. After the Morton word is
# shifted right by 3 every axis holds b >> 1 < 2^18, so adding 2^17 per axis only moves bit 17
# into bit 18: flip bit 17 and copy its old value to bit 18 -- three integer ops, no carries.
_BIT17 = 0b111 << (3 * 17)                  # bit 17 of x, y and z in the interleaved word
_BIT18 = 0b111 << (3 * 18)
_LEVEL_ONE = 1 << LEVEL_SHIFT


def _parent_word(m: torch.Tensor) -> torch.Tensor:
    m = m >> 3
    return (m ^ _BIT17) | ((m & _BIT17) << 3)


def parent(keys: torch.Tensor) -> torch.Tensor:
    """Keys (N,) int64 -> keys of their parents (N,) int64 (one level up, floor division)."""
    return _parent_word(keys & _MORTON_MASK) | ((keys >> LEVEL_SHIFT) + 1) << LEVEL_SHIFT


def children(keys: torch.Tensor) -> torch.Tensor:
    """Keys (N,) int64 of nodes at level >= 1 -> (N, 8) int64 child keys in Morton order."""
    level = keys >> LEVEL_SHIFT
    if keys.numel() and int(level.min()) < 1:
        raise ValueError("level-0 bricks have no child nodes")
    # Inverse of _parent_word: subtract 2^17 per axis (flip bit 17, clear bit 18), then shift.
    m = ((keys & _MORTON_MASK) ^ _BIT17) & ~_BIT18
    base = (m << 3) | ((level - 1) << LEVEL_SHIFT)
    return base[:, None] | torch.arange(8, dtype=torch.int64, device=keys.device)[None]


def child_index(keys: torch.Tensor) -> torch.Tensor:
    """Position (0..7) of each node among its parent's children, (N,) int64. The bias is even, so
    the low Morton bits are the parities of x, y, z."""
    return keys & 7


def neighbours(keys: torch.Tensor, offsets: torch.Tensor | None = None) -> torch.Tensor:
    """Keys (N,) int64 -> (N, M) int64 keys of the same-level neighbours at `offsets` (M, 3) int64
    on any device (default: the 26-neighbourhood). ValueError when a neighbour lies outside the
    key range (keys at its edge): its key would wrap around onto another node's."""
    offsets = NEIGHBOUR_OFFSETS if offsets is None else offsets
    coords, level = decode(keys)
    nb = (coords[:, None, :] + offsets.to(keys.device)[None]).reshape(-1, 3)
    check_coords(nb)
    m = offsets.shape[0]
    return encode(nb, level.repeat_interleave(m)).reshape(-1, m)


def ancestor(keys: torch.Tensor, levels_up: int) -> torch.Tensor:
    """Keys (N,) int64 -> keys of the ancestor `levels_up` levels higher, (N,) int64."""
    m = keys & _MORTON_MASK
    for _ in range(levels_up):
        m = _parent_word(m)
    return m | ((keys >> LEVEL_SHIFT) + levels_up) << LEVEL_SHIFT


def ancestors(keys: torch.Tensor, levels_up: int) -> torch.Tensor:
    """Keys (N,) int64 -> (N, levels_up + 1) int64: column j holds the ancestor j levels up
    (column 0 the keys themselves)."""
    if _cpu_kernels and keys.device.type == "cpu":
        return _cpu_kernels["ancestors"](keys, levels_up)
    chain = [keys]
    for _ in range(int(levels_up)):
        chain.append(parent(chain[-1]))
    return torch.stack(chain, dim=1)
