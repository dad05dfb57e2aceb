"""SparseVoxelOctree: one hash table over every node, bricks of voxels at level 0, summaries above.

Storage (all torch tensors on one device):
- `table`: node key (morton.encode) -> node id.
- node pool, indexed by node id: the node's key, its brick slot (-1 for parent nodes) and the
  summaries parents keep of their subtree (max occupancy log-odds, min |TSDF|, observed flag, and a
  mask of children pruned as confidently free).
- brick pool, indexed by brick slot: integer brick coordinates, the owning node, and every per-voxel
  attribute of the registry as a tensor (capacity, BRICK_VOXELS, *channels).

Per-voxel state lives only in registered attributes so that allocation, pruning, saving and loading
move all of them together; a later layer adds its own with `register_attribute`.
Pools grow by doubling (amortised O(1) per brick). On a CPU map with `reserve_bricks`, every pool
tensor is a prefix view of a larger reserved buffer whose pages the OS commits only when first
written, so growing moves the view's end instead of copying the map (a copy would stall one frame
for a time proportional to the map's size). The hash table grows incrementally (hashtable.py).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch

from . import morton

BRICK = 8                                   # voxels per brick edge
BRICK_VOXELS = BRICK ** 3
BRICK_SHIFT = 3                             # log2(BRICK)
UNKNOWN_OCC = float("-inf")                 # summary value of a subtree with no observed voxel
FREE_TSDF_MIN = 0.999                       # normalised TSDF at which a weighted voxel counts as free space
# Bytes of attribute rows a CPU map writes ahead of the highest brick slot in use, in one go
# (1024 bricks of the core attributes; fewer bricks when later layers make a brick bigger). A
# pool's fresh rows are otherwise committed by page faults in the frame that first takes them
# (~180 per LiDAR scan), and on a VM a fault right after the CPU was idle costs several times
# more than in bulk. In bytes, so that the stall every few frames stays bounded.
COMMIT_AHEAD_BYTES = 1024 * 4608

# Voxel (x, y, z) offsets inside a brick in storage order: linear index = x + 8*y + 64*z.
VOXEL_OFFSETS = torch.stack([torch.arange(BRICK_VOXELS) % BRICK, (torch.arange(BRICK_VOXELS) // BRICK) % BRICK,
                             torch.arange(BRICK_VOXELS) // (BRICK * BRICK)], dim=1)


# dtypes a per-voxel attribute may have: each maps 1:1 onto a numpy dtype of the same name, so map
# files store it as is (numpy has no bfloat16; torch's uint16/32/64 lack the ops the pools need).
ATTRIBUTE_DTYPES = {str(d).removeprefix("torch."): d for d in (
    torch.float16, torch.float32, torch.float64, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
    torch.bool)}


@dataclass(frozen=True)
class AttributeSpec:
    """A per-voxel attribute: `channels` () for scalars or (C,) for vectors; `fill` for new voxels."""
    name: str
    dtype: torch.dtype
    channels: tuple[int, ...] = ()
    fill: float = 0.0

    @property
    def bytes_per_voxel(self) -> int:
        return math.prod(self.channels) * torch.empty((), dtype=self.dtype).element_size()


MAX_ATTRIBUTE_VALUES = 4096          # values per voxel of one attribute (prod(channels)): 8 KiB+ per voxel is a mistake


def check_attribute_spec(spec: AttributeSpec) -> None:
    """ValueError unless map files can store `spec` (dtype in ATTRIBUTE_DTYPES), its channels are
    positive and at most MAX_ATTRIBUTE_VALUES values per voxel, and its fill fits the dtype."""
    if spec.dtype not in ATTRIBUTE_DTYPES.values():
        raise ValueError(f"attribute '{spec.name}': dtype {spec.dtype} is not one of {sorted(ATTRIBUTE_DTYPES)}")
    if not all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in spec.channels):
        raise ValueError(f"attribute '{spec.name}': channels must be positive integers, got {spec.channels}")
    if math.prod(spec.channels) > MAX_ATTRIBUTE_VALUES:
        raise ValueError(f"attribute '{spec.name}': {math.prod(spec.channels)} values per voxel, at most "
                         f"{MAX_ATTRIBUTE_VALUES}")
    fill = spec.fill
    if isinstance(fill, bool) or not isinstance(fill, (int, float)):
        raise ValueError(f"attribute '{spec.name}': fill must be a number, got {fill!r}")
    if spec.dtype == torch.bool:
        ok = fill in (0, 1)
    elif spec.dtype.is_floating_point:
        ok = math.isnan(fill) or abs(fill) <= torch.finfo(spec.dtype).max or math.isinf(fill)
    else:
        info = torch.iinfo(spec.dtype)
        ok = float(fill).is_integer() and info.min <= fill <= info.max
    if not ok:
        raise ValueError(f"attribute '{spec.name}': fill {fill!r} does not fit dtype {spec.dtype}")


# Compact core layers: 2 + 2 + 3 = 7 bytes per voxel for TSDF + weight + colour, 2 more for occupancy.
CORE_ATTRIBUTES = (
    AttributeSpec("tsdf", torch.float16, (), 1.0),      # normalised truncated SDF in [-1, 1]
    AttributeSpec("weight", torch.float16, (), 0.0),    # accumulated observation weight
    AttributeSpec("color", torch.uint8, (3,), 0.0),     # RGB
    AttributeSpec("occ", torch.float16, (), 0.0),       # occupancy log-odds (0 = unknown / p 0.5)
)



def _check_integer_slots(slots: torch.Tensor) -> None:
    """ValueError for brick slots that are not integers (a float slot would be truncated to the
    wrong brick, a bool mask read as slots 0 / 1)."""
    if slots.dtype == torch.bool or slots.dtype.is_floating_point or slots.dtype.is_complex:
        raise ValueError(f"brick slots must be an integer tensor, got dtype {slots.dtype}")


class SparseVoxelOctree:
    """Sparse voxel octree addressed by one hash table. See the module docstring for the layout.

    Args:
        voxel_size_m: level-0 voxel edge, metres.
        levels: number of parent levels above the bricks (level `levels` is the root level).
        device: torch device of every tensor.
        initial_bricks: brick pool capacity to start with.
        free_logodds: occupancy log-odds that a voxel in a pruned (confidently free) subtree has.
        reserve_bricks: brick pool capacity reserved up front as address space on a CPU map (see
            the module docstring); 0, or a CUDA map, grows by copying.
    """

    def __init__(self, voxel_size_m: float, levels: int = 6, device: str | torch.device = "cpu",
                 initial_bricks: int = 4096, free_logodds: float = -2.0, reserve_bricks: int = 0):
        from .hashtable import HashTable
        if not voxel_size_m > 0:
            raise ValueError(f"voxel_size_m must be > 0, got {voxel_size_m}")
        if not 1 <= levels <= morton.MAX_LEVEL:
            raise ValueError(f"levels must be in [1, {morton.MAX_LEVEL}], got {levels}")
        self.voxel_size_m = float(voxel_size_m)
        self.levels = int(levels)
        self.device = torch.device(device)
        self.free_logodds = float(free_logodds)
        self.brick_summaries = None       # see use_kernels
        self._closure_kernel = None
        self._bricks_free_kernel = None
        self._stale_pending = False       # a brick_stale / brick_stale_parents bit is set
        self.table = HashTable(4 * initial_bricks, self.device)
        self.specs: dict[str, AttributeSpec] = {}
        self.attrs: dict[str, torch.Tensor] = {}
        cap_b = max(16, int(initial_bricks))
        self.reserve_bricks = max(cap_b, int(reserve_bricks)) if reserve_bricks and self.device.type == "cpu" else 0
        self._stores: dict[str, torch.Tensor] = {}     # pool name -> reserved buffer its tensor is a prefix of
        self._alloc_nodes(2 * cap_b)
        self._alloc_bricks(cap_b)
        for spec in CORE_ATTRIBUTES:
            self.register_attribute(spec)
        self._committed_rows = cap_b              # attribute rows written at least once (see _commit_ahead)
        self._rows_taken = 0                      # brick rows ever taken: those above still hold the fill values

    def __deepcopy__(self, memo):
        """A copy that owns only the pools' capacity: deep-copying a view of a reserved buffer
        would clone (and commit) the whole buffer. The copy reserves anew when it first grows."""
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        pools = set(self.NODE_FIELDS + self.BRICK_FIELDS)
        for k, v in self.__dict__.items():
            if k in pools:
                v = v.clone()
            elif k == "attrs":
                v = {n: t.clone() for n, t in v.items()}
            elif k == "_stores":
                v = {}
            else:
                v = copy.deepcopy(v, memo)
            setattr(new, k, v)
        return new

    def use_kernels(self, brick_summaries=None, hash_find=None, bricks_free=None, hash_insert=None,
                    refresh_closure=None) -> None:
        """Use compiled twins for the bookkeeping: `brick_summaries` with the signature of
        brick_summaries_torch, `hash_find` / `hash_insert` those of native.hash_find_cpp /
        hash_insert_absent_cpp, `bricks_free` that of bricks_free_torch (with the octree first),
        `refresh_closure` that of native.refresh_closure_cpp (twin of _refresh_closure).
        None = pure torch."""
        self.brick_summaries = brick_summaries
        self._closure_kernel = refresh_closure
        self.table.use_kernels(hash_find, hash_insert)
        self._bricks_free_kernel = bricks_free

    def bricks_free_torch(self, slots: torch.Tensor, occ_max: float, tsdf_min: float = FREE_TSDF_MIN) -> torch.Tensor:
        """(N,) bool for alive slots (N,) int64, on the map device: the brick is wholly observed
        free space, every voxel with occupancy log-odds <= occ_max and either no weight or TSDF >=
        tsdf_min."""
        occ = self.attrs["occ"][slots].float()
        tsdf = self.attrs["tsdf"][slots].float()
        w = self.attrs["weight"][slots].float()
        return (occ <= occ_max).all(1) & ((w == 0) | (tsdf >= tsdf_min)).all(1)

    def bricks_free(self, slots: torch.Tensor, occ_max: float, tsdf_min: float = FREE_TSDF_MIN) -> torch.Tensor:
        """bricks_free_torch (slots (N,) int64 -> (N,) bool, on the map device), through the
        compiled twin when one is installed (use_kernels)."""
        if self._bricks_free_kernel is not None and self.device.type == "cpu":
            return self._bricks_free_kernel(self, slots, occ_max, tsdf_min)
        return self.bricks_free_torch(slots, occ_max, tsdf_min)

    # ------------------------------------------------------------------ pools
    def _alloc_nodes(self, cap: int) -> None:
        self.node_key = self._pool("node_key", (cap,), torch.int64, -1, 2)
        self.node_brick = self._pool("node_brick", (cap,), torch.int32, -1, 2)
        self.node_max_occ = self._pool("node_max_occ", (cap,), torch.float32, UNKNOWN_OCC, 2)
        self.node_min_abs_tsdf = self._pool("node_min_abs_tsdf", (cap,), torch.float32, 1.0, 2)
        self.node_observed = self._pool("node_observed", (cap,), torch.bool, False, 2)
        self.node_free_mask = self._pool("node_free_mask", (cap,), torch.uint8, 0, 2)
        self._free_nodes = torch.arange(cap - 1, -1, -1, dtype=torch.int64, device=self.device)

    def _alloc_bricks(self, cap: int) -> None:
        self.brick_coord = self._pool("brick_coord", (cap, 3), torch.int32, 0)
        self.brick_node = self._pool("brick_node", (cap,), torch.int32, -1)
        self.brick_alive = self._pool("brick_alive", (cap,), torch.bool, False)
        self.brick_dirty = self._pool("brick_dirty", (cap,), torch.bool, False)   # changed since the last mesh call
        # Bricks whose summaries (and their ancestors') wait for flush_summaries, and bricks whose
        # own summaries are fresh but not their ancestors': one bit per brick, so frames that touch
        # the same bricks between queries cost one refresh each, with no list to de-duplicate.
        self.brick_stale = self._pool("brick_stale", (cap,), torch.bool, False)
        self.brick_stale_parents = self._pool("brick_stale_parents", (cap,), torch.bool, False)
        self._free_bricks = torch.arange(cap - 1, -1, -1, dtype=torch.int64, device=self.device)

    def _pool(self, name: str, shape: tuple, dtype: torch.dtype, fill, per_brick: int = 1,
              rows: int = 0) -> torch.Tensor:
        """A new pool tensor of `shape` filled with `fill` (None: uninitialised). With a reservation
        it is the prefix of a buffer of max(rows, per_brick * reserve_bricks, shape[0]) rows."""
        store = None
        if self.reserve_bricks:
            n = max(int(rows), per_brick * self.reserve_bricks, shape[0])
            try:
                store = torch.empty((n,) + tuple(shape[1:]), dtype=dtype, device=self.device)
            except (RuntimeError, MemoryError):      # refused (ulimit -v; strict overcommit without room)
                self.reserve_bricks = 0
        if store is None:
            self._stores.pop(name, None)
            return torch.empty(shape, dtype=dtype, device=self.device) if fill is None else \
                torch.full(shape, fill, dtype=dtype, device=self.device)
        self._stores[name] = store
        view = store[:shape[0]]
        return view if fill is None else view.fill_(fill)

    def _extended(self, name: str, t: torch.Tensor, new_cap: int, fill) -> torch.Tensor:
        """Pool tensor t grown to new_cap rows, old rows kept, new rows `fill` (None: uninitialised):
        in place inside its reserved buffer when that is large enough, otherwise by one copy (into a
        buffer of twice new_cap rows when reserving)."""
        old_cap = t.shape[0]
        store = self._stores.get(name)
        if store is not None and (store.data_ptr() != t.data_ptr() or store.dtype != t.dtype):
            store = None                  # the pool tensor was replaced: its old buffer is not it
        if store is not None and store.shape[0] >= new_cap:
            grown = store[:new_cap]
        else:
            rows = 2 * new_cap if store is not None else 0      # reservation used up: room to double again
            grown = self._pool(name, (new_cap,) + tuple(t.shape[1:]), t.dtype, None, rows=rows)
            grown[:old_cap] = t
        if fill is not None:
            grown[old_cap:] = fill
        return grown

    NODE_FIELDS = ("node_key", "node_brick", "node_max_occ", "node_min_abs_tsdf", "node_observed", "node_free_mask")
    BRICK_FIELDS = ("brick_coord", "brick_node", "brick_alive", "brick_dirty", "brick_stale", "brick_stale_parents")

    def _grow(self, fields, attrs: bool, new_cap: int, free_name: str) -> None:
        old_cap = getattr(self, fields[0]).shape[0]
        for name in fields:
            fill = {"node_key": -1, "node_brick": -1, "brick_node": -1,
                    "node_max_occ": UNKNOWN_OCC, "node_min_abs_tsdf": 1.0}.get(name, 0)
            setattr(self, name, self._extended(name, getattr(self, name), new_cap, fill))
        if attrs:        # new voxels are reset when their brick is taken (_reset_voxels)
            for name, t in self.attrs.items():
                self.attrs[name] = self._extended("attr:" + name, t, new_cap, None)
        fresh = torch.arange(new_cap - 1, old_cap - 1, -1, dtype=torch.int64, device=self.device)
        setattr(self, free_name, torch.cat([fresh, getattr(self, free_name)]))

    def _take(self, n: int, free_name: str, fields, attrs: bool) -> torch.Tensor:
        free = getattr(self, free_name)
        if free.numel() < n:
            cap = getattr(self, fields[0]).shape[0]
            new_cap = cap
            while new_cap - cap + free.numel() < n:
                new_cap *= 2
            self._grow(fields, attrs, new_cap, free_name)
            free = getattr(self, free_name)
        taken = free[free.numel() - n:].flip(0)
        setattr(self, free_name, free[:free.numel() - n])
        return taken

    def _commit_ahead(self, rows_in_use: int) -> None:
        """Once bricks reach past the rows written so far, write every attribute's rows up to
        COMMIT_AHEAD_BYTES beyond `rows_in_use` (or the pool's end) with its fill value, so that
        the OS commits their pages in one pass instead of by faults scattered over many frames."""
        if rows_in_use <= self._committed_rows:
            return
        row_bytes = sum(t[0].numel() * t.element_size() for t in self.attrs.values())
        end = min(self.brick_alive.shape[0], rows_in_use + max(1, COMMIT_AHEAD_BYTES // max(1, row_bytes)))
        for name, spec in self.specs.items():
            self.attrs[name][self._committed_rows:end].fill_(spec.fill)
        self._committed_rows = end

    # ------------------------------------------------------------------ attributes
    def register_attribute(self, spec: AttributeSpec) -> None:
        """Add a per-voxel attribute; existing bricks get `spec.fill`. ValueError for a spec
        check_attribute_spec refuses or a name already taken by another spec."""
        check_attribute_spec(spec)
        if spec.name in self.specs:
            if self.specs[spec.name] != spec:
                raise ValueError(f"attribute '{spec.name}' already registered as {self.specs[spec.name]}")
            return
        cap = self.brick_alive.shape[0]
        self.specs[spec.name] = spec
        self.attrs[spec.name] = self._pool("attr:" + spec.name, (cap, BRICK_VOXELS) + spec.channels, spec.dtype,
                                           spec.fill)

    def _reset_new_voxels(self, slots: torch.Tensor) -> None:
        """Every attribute at its fill value in the rows of newly taken brick slots (N,) int64. On a
        CPU map, rows never taken before hold it already (the pool's fill or _commit_ahead's)."""
        if self.device.type == "cpu":
            top = int(slots.max()) + 1
            self._commit_ahead(top)
            reused = slots[slots < self._rows_taken]
            self._rows_taken = max(self._rows_taken, top)
            slots = reused
        if slots.numel():
            self._reset_voxels(slots)

    def _reset_voxels(self, slots: torch.Tensor) -> None:
        for name, spec in self.specs.items():
            t = self.attrs[name]
            # index_fill_ costs per element: filling a brick's row as int64 words of the fill
            # value's byte pattern is 6x (uint8 colour) to 1.5x (float16) cheaper than in its dtype.
            if t.is_contiguous() and (t[0].numel() * t.element_size()) % 8 == 0 and t.shape[0]:
                word = torch.full((8 // t.element_size(),), spec.fill, dtype=t.dtype).view(torch.int64)
                t.view(t.shape[0], -1).view(torch.int64).index_fill_(0, slots, int(word))
            else:
                t.index_fill_(0, slots, spec.fill)

    # ------------------------------------------------------------------ sizes
    @property
    def num_bricks(self) -> int:
        return int(self.brick_alive.sum())

    @property
    def num_voxels(self) -> int:
        return self.num_bricks * BRICK_VOXELS

    @property
    def num_nodes(self) -> int:
        self.flush_summaries()                   # refreshing may create parent nodes
        return len(self.table)

    @property
    def nbytes(self) -> int:
        """Bytes of every map tensor: hash table, node and brick pools, voxel attributes."""
        total = self.table.nbytes + sum(t.nbytes for t in self.attrs.values())
        total += sum(getattr(self, n).nbytes for n in self.NODE_FIELDS + self.BRICK_FIELDS)
        return total + self._free_nodes.nbytes + self._free_bricks.nbytes

    @property
    def brick_size_m(self) -> float:
        return self.voxel_size_m * BRICK

    # ------------------------------------------------------------------ bricks
    def alive_slots(self) -> torch.Tensor:
        """Slots of all allocated bricks, (M,) int64."""
        return self.brick_alive.nonzero().squeeze(1)

    def brick_keys(self, coords: torch.Tensor) -> torch.Tensor:
        """Brick coordinates (N, 3) int32/int64 -> level-0 keys (N,) int64 (range-checked), on the
        coordinates' device."""
        morton.check_coords(coords)
        return morton.encode(coords, 0)

    def lookup_bricks(self, coords: torch.Tensor) -> torch.Tensor:
        """Brick coordinates (N, 3) int32/int64, any device -> brick slots (N,) int64 on the map
        device, -1 where not allocated, which includes coordinates outside the key range (no brick
        can be there: the neighbours of a brick at the map's edge)."""
        coords = coords.to(self.device)
        if coords.ndim == 2 and coords.shape[1] == 3 and not coords.is_floating_point() and coords.numel():
            inside = ((coords >= morton.COORD_MIN) & (coords <= morton.COORD_MAX)).all(1)
            if not bool(inside.all()):
                out = torch.full((coords.shape[0],), -1, dtype=torch.int64, device=self.device)
                out[inside] = self.lookup_bricks(coords[inside])
                return out
        nodes = self.table.lookup(self.brick_keys(coords))
        out = torch.full(nodes.shape, -1, dtype=torch.int64, device=self.device)
        ok = nodes >= 0
        out[ok] = self.node_brick[nodes[ok].long()].long()
        return out

    def allocate_bricks(self, coords: torch.Tensor, distinct: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Find or create bricks at coordinates (N, 3) int32/int64, any device (duplicates allowed,
        unless `distinct` promises that no coordinate repeats, which skips the de-duplication).

        Returns (slots (N,) int64, is_new (N,) bool) on the map device. New bricks start with
        every attribute at its fill value, except occupancy inside subtrees pruned as free, which
        starts free.
        """
        morton.check_coords(coords)                 # before the cast: a float would be truncated
        return self.allocate_brick_keys(morton.encode(coords.to(self.device, torch.int64), 0), distinct)

    def allocate_brick_keys(self, keys: torch.Tensor, distinct: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """allocate_bricks for level-0 keys (N,) int64, any device (morton.encode of in-range brick
        coordinates: only the dtype is checked here, as the compiled LiDAR trace gives them)."""
        if keys.dtype != torch.int64 or keys.ndim != 1:
            raise ValueError(f"brick keys must be (N,) int64, got {keys.dtype} {tuple(keys.shape)}")
        keys = keys.to(self.device)
        if distinct:
            uniq, inv = keys, None
        else:
            uniq, inv = torch.unique(keys, return_inverse=True)
        nodes = self.table.lookup(uniq).long()
        missing = nodes < 0
        n_new = int(missing.sum())
        if n_new:
            new_at = missing.nonzero().squeeze(1)
            if distinct:          # new bricks take slots in key order, as with de-duplicated keys
                new_keys, order = torch.sort(uniq[new_at])
                new_at = new_at[order]
            else:
                new_keys = uniq[new_at]
            node_ids = self._take(n_new, "_free_nodes", self.NODE_FIELDS, False)
            slots = self._take(n_new, "_free_bricks", self.BRICK_FIELDS, True)
            self.table.insert_new(new_keys, node_ids.to(torch.int32))    # just looked up: absent, distinct
            self._init_nodes(node_ids, new_keys, slots)
            c, _ = morton.decode(new_keys)
            self.brick_coord[slots] = c.to(torch.int32)
            self.brick_node[slots] = node_ids.to(torch.int32)
            self.brick_alive[slots] = True
            self.brick_dirty[slots] = True
            self._reset_new_voxels(slots)
            was_free = self._expand_pruned(new_keys)
            if bool(was_free.any()):
                self.attrs["occ"][slots[was_free]] = self.free_logodds
                self.mark_stale(slots[was_free])   # their new parents summarise them as free
            nodes[new_at] = node_ids
        slot_u = self.node_brick.index_select(0, nodes).long()     # (see HashTable.lookup)
        if inv is None:
            return slot_u, missing
        return slot_u[inv], missing[inv] & _first_occurrence(inv, uniq.numel())

    def _init_nodes(self, node_ids: torch.Tensor, keys: torch.Tensor, slots: torch.Tensor | None) -> None:
        self.node_key[node_ids] = keys
        self.node_brick[node_ids] = -1 if slots is None else slots.to(torch.int32)
        self.node_max_occ[node_ids] = UNKNOWN_OCC
        self.node_min_abs_tsdf[node_ids] = 1.0
        self.node_observed[node_ids] = False
        self.node_free_mask[node_ids] = 0

    def _valid_slots(self, slots: torch.Tensor) -> torch.Tensor:
        """Distinct alive slots among (N,) integer slots; negative ones (lookup_bricks' "not
        allocated") are skipped. ValueError for a slot beyond the pool."""
        slots = torch.as_tensor(slots)
        _check_integer_slots(slots)
        slots = torch.unique(slots.to(self.device, torch.int64))
        if slots.numel() and int(slots.max()) >= self.brick_alive.shape[0]:
            raise ValueError(f"brick slot {int(slots.max())} is beyond the pool of {self.brick_alive.shape[0]}")
        slots = slots[slots >= 0]
        return slots[self.brick_alive[slots]]

    def erase_bricks(self, slots: torch.Tensor) -> None:
        """Free brick slots (N,) int64 (any integer dtype, any device) and their nodes; ancestors'
        summaries are refreshed. Negative slots (lookup_bricks' "not allocated") and dead ones are
        skipped."""
        slots = self._valid_slots(slots)
        if slots.numel() == 0:
            return
        nodes = self.brick_node[slots].long()
        keys = self.node_key[nodes]
        self._release_nodes(nodes)
        self.brick_alive[slots] = False
        self.brick_dirty[slots] = False
        self.brick_stale[slots] = False          # their ancestors are refreshed below
        self.brick_stale_parents[slots] = False
        self.brick_node[slots] = -1
        self._free_bricks = torch.cat([self._free_bricks, slots])
        self._refresh_ancestors(morton.parent(keys), drop_empty=True)

    def _release_nodes(self, nodes: torch.Tensor) -> None:
        self.table.erase(self.node_key[nodes])
        self.node_key[nodes] = -1
        self.node_brick[nodes] = -1
        self._free_nodes = torch.cat([self._free_nodes, nodes])

    # ------------------------------------------------------------------ summaries
    def mark_stale(self, slots: torch.Tensor) -> None:
        """Note that the voxels of brick slots (N,) int64 (any integer dtype and device) changed;
        their summaries and their ancestors' are refreshed by the next flush_summaries (every
        query of node summaries flushes first). Frames arriving faster than queries then share one
        refresh per brick."""
        _check_integer_slots(slots)
        if slots.numel():
            self._stale_pending = True            # first: bits set before a bad slot raises still count
            self.brick_stale.index_fill_(0, slots.to(self.device, torch.int64), True)

    def mark_parents_stale(self, slots: torch.Tensor) -> None:
        """Like mark_stale, for brick slots (N,) int64 (any integer dtype and device) whose own
        summaries the caller has already brought up to date (the compiled RGB-D and LiDAR kernels
        do): only their ancestors wait."""
        _check_integer_slots(slots)
        if slots.numel():
            self._stale_pending = True
            self.brick_stale_parents.index_fill_(0, slots.to(self.device, torch.int64), True)

    @property
    def summaries_pending(self) -> bool:
        """Whether bricks are noted (mark_stale / mark_parents_stale) for the next flush."""
        return self._stale_pending

    def flush_summaries(self) -> None:
        """Refresh the summaries noted by mark_stale / mark_parents_stale. Reading the bits costs
        a pass over the brick pool's bits (~0.1 ms per 10^5 bricks of capacity) besides the refresh."""
        if self._stale_pending:
            # nonzero gives them sorted and distinct, as _valid_slots would (at ~4 ms per 80 k)
            slots = (self.brick_stale & self.brick_alive).nonzero().squeeze(1)
            parents_only = (self.brick_stale_parents & self.brick_alive).nonzero().squeeze(1)
            self.brick_stale.fill_(False)
            self.brick_stale_parents.fill_(False)
            self._stale_pending = False
            self._update_valid_summaries(slots, parents_only)

    def update_summaries(self, slots: torch.Tensor, parents_only: torch.Tensor | None = None) -> None:
        """Recompute the summaries of bricks (N,) int64 and of all their ancestors, and of the
        ancestors of bricks parents_only (K,) int64 (whose own summaries are up to date); slots of
        any integer dtype and device.

        Cost is proportional to the number of bricks passed and the tree depth, not the map size.
        """
        none = torch.zeros(0, dtype=torch.int64, device=self.device)
        self._update_valid_summaries(self._valid_slots(slots),
                                     self._valid_slots(parents_only) if parents_only is not None else none)

    def _update_valid_summaries(self, slots: torch.Tensor, parents_only: torch.Tensor) -> None:
        """update_summaries for distinct alive slots (N,) and (K,) int64, sorted."""
        if slots.numel():
            nodes = self.brick_node[slots].long()
            if self.brick_summaries is not None:
                max_occ, min_tsdf, observed = self.brick_summaries(self, slots)
            else:
                max_occ, min_tsdf, observed = brick_summaries_torch(self, slots)
            self.node_max_occ[nodes] = max_occ
            self.node_min_abs_tsdf[nodes] = min_tsdf
            self.node_observed[nodes] = observed
        if parents_only.numel():
            slots = torch.cat([slots, parents_only])
        if slots.numel():
            self._refresh_ancestors(morton.parent(self.node_key[self.brick_node[slots].long()]), drop_empty=False)

    def _refresh_ancestors(self, parent_keys: torch.Tensor, drop_empty: bool) -> None:
        """Recompute parent nodes (N,) int64 keys of one level and all their ancestors from their
        children. With drop_empty, nodes left without children (or pruned bits) are released,
        level by level, before the level above reads them."""
        if not drop_empty:
            self._refresh_closure(parent_keys)
            return
        keys = torch.unique(parent_keys)
        while keys.numel() and int(morton.level_of(keys[:1])) <= self.levels:
            ids = self._ensure_nodes(keys)
            kid_ids = self.table.lookup(morton.children(keys).reshape(-1)).long().reshape(-1, 8)
            combine_children_torch(self, ids, kid_ids)
            empty = ~(kid_ids >= 0).any(1) & (self.node_free_mask[ids] == 0)
            if bool(empty.any()):
                self._release_nodes(ids[empty])
            keys = torch.unique(morton.parent(keys))

    def _refresh_closure(self, parent_keys: torch.Tensor) -> None:
        """_refresh_ancestors without releases, in a fixed number of batched steps: the keys and all
        their ancestors up to the root level at once (sorted keys are ordered by level, as the
        level sits in the top bits), their nodes, their children's ids, then one bottom-up pass."""
        if parent_keys.numel() == 0:
            return
        if self._closure_kernel is not None and self.device.type == "cpu":
            self._closure_kernel(self, parent_keys)
            return
        first = int(morton.level_of(parent_keys).min())
        if first > self.levels:
            return
        keys = torch.unique(morton.ancestors(torch.unique(parent_keys), self.levels - first).reshape(-1))
        keys = keys[morton.level_of(keys) <= self.levels]
        ids = self._ensure_nodes(keys)
        kid_ids = self.table.lookup(morton.children(keys).reshape(-1)).long().reshape(-1, 8)
        combine_children_torch(self, ids, kid_ids)

    def _ensure_nodes(self, keys: torch.Tensor) -> torch.Tensor:
        """Node ids of parent keys (N,) int64 (unique), creating missing ones. (N,) int64."""
        ids = self.table.lookup(keys).long()
        missing = ids < 0
        if bool(missing.any()):
            new = self._take(int(missing.sum()), "_free_nodes", self.NODE_FIELDS, False)
            self.table.insert_new(keys[missing], new.to(torch.int32))     # just looked up: absent, distinct
            self._init_nodes(new, keys[missing], None)
            ids[missing] = new
        return ids

    # ------------------------------------------------------------------ pruning and clearing
    def prune_free(self, free_below_logodds: float) -> int:
        """Collapse bricks whose every voxel is observed free (occupancy <= threshold, no TSDF
        surface) into a bit of their parent; then parents whose 8 children are all pruned into
        theirs. Returns the number of bricks removed. The threshold must be < 0 (log-odds of
        free): at 0 or above, voxels never observed (occupancy 0) would count as free."""
        if not (math.isfinite(free_below_logodds) and free_below_logodds < 0):
            raise ValueError(f"free_below_logodds must be a negative log-odds (free), got {free_below_logodds}")
        self.flush_summaries()
        slots = self.alive_slots()
        if slots.numel() == 0:
            return 0
        slots = slots[self.bricks_free(slots, free_below_logodds)]
        if slots.numel() == 0:
            return 0
        keys = self.node_key[self.brick_node[slots].long()]
        self._set_free_bits(keys)
        self.erase_bricks(slots)
        # Whole parents whose children are all pruned collapse one level further, up to below the root.
        for _ in range(self.levels - 1):
            k, ids = self.table.items()
            full = (self.node_free_mask[ids.long()] == 255) & (morton.level_of(k) < self.levels)
            if not bool(full.any()):
                break
            kids = morton.children(k[full])
            if bool((self.table.lookup(kids.reshape(-1)) >= 0).any()):
                keep = ~(self.table.lookup(kids.reshape(-1)).reshape(-1, 8) >= 0).any(1)
                k_full, ids_full = k[full][keep], ids[full][keep].long()
            else:
                k_full, ids_full = k[full], ids[full].long()
            if k_full.numel() == 0:
                break
            self._set_free_bits(k_full)
            self._release_nodes(ids_full)
            self._refresh_ancestors(morton.parent(k_full), drop_empty=False)
        return int(slots.numel())

    def _set_free_bits(self, keys: torch.Tensor) -> None:
        pk = morton.parent(keys)
        pid = self._ensure_nodes_dupes(pk)
        bit = (torch.ones_like(keys) << morton.child_index(keys)).to(torch.uint8)
        mask = torch.zeros_like(self.node_free_mask, dtype=torch.int64)
        mask.index_put_((pid,), bit.long(), accumulate=True)   # distinct children -> bits add like OR
        touched = torch.unique(pid)
        self.node_free_mask[touched] |= mask[touched].to(torch.uint8)

    def _ensure_nodes_dupes(self, keys: torch.Tensor) -> torch.Tensor:
        uniq, inv = torch.unique(keys, return_inverse=True)
        return self._ensure_nodes(uniq)[inv]

    def _expand_pruned(self, brick_keys: torch.Tensor) -> torch.Tensor:
        """For newly allocated bricks (N,) int64 keys: clear the free bits on their path that cover
        them, pushing them down so siblings stay free. Returns (N,) bool: inside a pruned region."""
        n, L = brick_keys.numel(), self.levels
        inside = torch.zeros(n, dtype=torch.bool, device=self.device)
        if not bool(self.node_free_mask.any()):       # nothing pruned anywhere: the common case
            return inside
        # One look at every ancestor at once; only when some path crosses a free bit do the levels
        # have to be walked one by one (clearing a bit creates the nodes the level below reads).
        chain = morton.ancestors(brick_keys, L)                 # (N, L + 1), column j: j levels up
        ids = self.table.lookup(chain[:, 1:].reshape(-1)).view(n, L).long()
        ok = ids >= 0
        below = morton.child_index(chain[:, :-1])
        if not bool(((self.node_free_mask[ids[ok]].long() >> below[ok]) & 1).any()):
            return inside
        for up in range(L, 0, -1):
            anc, child = chain[:, up], chain[:, up - 1]        # the node that may carry the free bit
            ids = self.table.lookup(anc).long()
            ok = ids >= 0
            bit = torch.zeros_like(inside)
            bit[ok] = ((self.node_free_mask[ids[ok]].long() >> morton.child_index(child[ok])) & 1).bool()
            if not bool(bit.any()):
                continue
            inside |= bit
            # Clear the bit and re-create the child as a node whose 8 children are all pruned free.
            sel_ids, sel_child = ids[bit], child[bit]
            # Several new bricks may clear bits of one node: OR their bits per node first (an
            # indexed `&=` with repeated ids would keep only one of them).
            pair = torch.unique(sel_ids * 8 + morton.child_index(sel_child))
            touched, inv = torch.unique(pair // 8, return_inverse=True)
            clear = torch.zeros(touched.numel(), dtype=torch.int64, device=self.device)
            clear.index_add_(0, inv, torch.ones_like(pair) << (pair % 8))   # distinct bits: + is OR
            self.node_free_mask[touched] &= ~clear.to(torch.uint8)
            if up > 1:
                uniq_child = torch.unique(sel_child)
                new_ids = self._ensure_nodes(uniq_child)
                self.node_free_mask[new_ids] = 255
        return inside

    def clear_outside_radius(self, center_m: torch.Tensor, radius_m: float) -> int:
        """Erase bricks whose centre is farther than radius_m from center_m (3,) float tensor (any
        float dtype and device), and forget pruned free space (free bits) whose cube centre is:
        the map then answers nothing beyond the radius and stays bounded. Returns the number of
        bricks erased."""
        if radius_m <= 0:
            return 0
        far = self.bricks_outside_radius(center_m, radius_m)
        self.erase_bricks(far)
        self.forget_free_outside_radius(center_m, radius_m)
        return int(far.numel())

    def bricks_outside_radius(self, center_m: torch.Tensor, radius_m: float) -> torch.Tensor:
        """Slots (N,) int64, on the map device, of the bricks whose centre is farther than radius_m
        from center_m (3,) float tensor (any float dtype and device)."""
        slots = self.alive_slots()
        centres = (self.brick_coord[slots].double() + 0.5) * self.brick_size_m
        return slots[(centres - center_m.to(self.device).double()).norm(dim=1) > radius_m]

    def forget_free_outside_radius(self, center_m: torch.Tensor, radius_m: float) -> None:
        """Clear the free bits of pruned cubes whose centre is farther than radius_m from
        center_m (3,) float tensor (any float dtype and device); nodes left with neither children
        nor free bits go."""
        if not bool(self.node_free_mask.any()):
            return
        c = center_m.to(self.device).double()
        keys, ids = self._nodes_with_free_bits()
        bits = ((self.node_free_mask[ids].long()[:, None] >> torch.arange(8, device=self.device)) & 1).bool()
        coords, level = morton.decode(morton.children(keys).reshape(-1))          # column j <-> bit j
        size_m = self.brick_size_m * (torch.ones_like(level) << level).double()
        far = (((coords.double() + 0.5) * size_m[:, None] - c).norm(dim=1) > radius_m).view(-1, 8)
        drop = bits & far
        touched = drop.any(1)
        if not bool(touched.any()):
            return
        clear = (drop.long() << torch.arange(8, device=self.device)).sum(1)
        self.node_free_mask[ids[touched]] &= ~clear[touched].to(torch.uint8)
        self._refresh_by_level(keys[touched], drop_empty=True)

    def _refresh_by_level(self, node_keys: torch.Tensor, drop_empty: bool) -> None:
        """Refresh the summaries of parent nodes (N,) int64 keys of any levels and their ancestors,
        lowest level first (each pass reads the level below it fresh)."""
        levels = morton.level_of(node_keys)
        for lvl in torch.unique(levels).tolist():
            self._refresh_ancestors(node_keys[levels == lvl], drop_empty)

    def refresh_free_summaries(self) -> None:
        """Recompute the summaries of every node with pruned children (and their ancestors), after
        free_logodds changed: pruned space stands for voxels at that value."""
        keys, _ = self._nodes_with_free_bits()
        if keys.numel():
            self._refresh_by_level(keys, drop_empty=False)

    def _nodes_with_free_bits(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(keys (N,) int64, ids (N,) int64) of the live nodes with pruned children: a pass over
        the node pool, not the hash table (this runs every frame with a clearing radius)."""
        ids = ((self.node_free_mask != 0) & (self.node_key >= 0)).nonzero().squeeze(1)
        return self.node_key[ids], ids

    # ------------------------------------------------------------------ queries
    def occupancy_at(self, points_m: torch.Tensor, level: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Occupancy log-odds at world points (N, 3), a tensor of any real dtype on any device
        (read as float64), at `level` (0 = voxel; L >= 1 = max over the level-L node containing
        the point). Returns (logodds (N,) float32, known (N,) bool),
        on the map device. Inside pruned free subtrees the answer is the free value; outside the
        map's key range it is unknown. ValueError for a bad shape, non-finite points or level."""
        if not isinstance(points_m, torch.Tensor) or points_m.ndim != 2 or points_m.shape[1] != 3:
            raise ValueError(f"points_m must be a (N, 3) tensor, got {getattr(points_m, 'shape', type(points_m))}")
        if isinstance(level, bool) or not hasattr(level, "__index__") or not 0 <= level <= self.levels:
            raise ValueError(f"level must be an integer in [0, {self.levels}], got {level!r}")
        level = int(level)
        p = points_m.to(self.device, torch.float64)
        if not bool(torch.isfinite(p).all()):
            raise ValueError("points_m must be finite (NaN or inf found)")
        brick_f = torch.floor(p / (self.voxel_size_m * BRICK))
        inside = ((brick_f >= morton.COORD_MIN) & (brick_f <= morton.COORD_MAX)).all(1)
        if not bool(inside.all()):               # encoding would wrap into other keys
            out = torch.zeros(p.shape[0], dtype=torch.float32, device=self.device)
            known = torch.zeros(p.shape[0], dtype=torch.bool, device=self.device)
            if bool(inside.any()):
                out[inside], known[inside] = self.occupancy_at(p[inside], level)
            return out, known
        self.flush_summaries()
        vox = torch.floor(p / self.voxel_size_m).long()
        brick = vox >> BRICK_SHIFT
        out = torch.zeros(p.shape[0], dtype=torch.float32, device=self.device)
        known = torch.zeros(p.shape[0], dtype=torch.bool, device=self.device)
        keys0 = morton.encode(brick, 0)
        if level == 0:
            nodes = self.table.lookup(keys0).long()
            ok = nodes >= 0
            slots = self.node_brick[nodes[ok]].long()
            local = vox[ok] & (BRICK - 1)
            lin = local[:, 0] + BRICK * local[:, 1] + BRICK * BRICK * local[:, 2]
            occ = self.attrs["occ"][slots, lin].float()
            w = self.attrs["weight"][slots, lin].float()
            out[ok] = occ
            known[ok] = (occ != 0) | (w > 0)
            resolved = ok
        else:
            nodes = self.table.lookup(morton.ancestor(keys0, level)).long()
            ok = nodes >= 0
            out[ok] = self.node_max_occ[nodes[ok]]
            known[ok] = self.node_observed[nodes[ok]]
            resolved = ok
        # Fall back to free bits of the nearest existing ancestor.
        for up in range(max(level, 0) + 1, self.levels + 1):
            todo = ~resolved
            if not bool(todo.any()):
                break
            anc = morton.ancestor(keys0[todo], up)
            ids = self.table.lookup(anc).long()
            has = ids >= 0
            idx = todo.nonzero().squeeze(1)
            child = morton.ancestor(keys0[todo][has], up - 1)
            bit = ((self.node_free_mask[ids[has]].long() >> morton.child_index(child)) & 1).bool()
            hit_idx = idx[has]
            out[hit_idx[bit]] = self.free_logodds
            known[hit_idx[bit]] = True
            resolved[hit_idx] = True
        out[~known] = 0.0
        return out, known

    def keys_in_morton_order(self, level: int = 0) -> torch.Tensor:
        """All node keys at `level`, sorted (Morton order), (M,) int64."""
        self.flush_summaries()
        k, _ = self.table.items()
        k = k[morton.level_of(k) == level]
        return torch.sort(k).values

    def bricks_in_aabb(self, lo_m, hi_m) -> torch.Tensor:
        """Slots (M,) int64, on the map device, of bricks that overlap the box [lo_m, hi_m] (each
        (3,) metres: sequence, numpy array or tensor on any device, read as float64; faces
        included). ValueError unless both are finite (3,) with lo_m <= hi_m."""
        lo = torch.as_tensor(lo_m, dtype=torch.float64).to(self.device)
        hi = torch.as_tensor(hi_m, dtype=torch.float64).to(self.device)
        if lo.shape != (3,) or hi.shape != (3,) or not bool(torch.isfinite(lo).all() & torch.isfinite(hi).all()):
            raise ValueError(f"box corners must be finite (3,) vectors, got {lo.tolist()} and {hi.tolist()}")
        if not bool((lo <= hi).all()):
            raise ValueError(f"box lo_m {lo.tolist()} must be <= hi_m {hi.tolist()} on every axis")
        slots = self.alive_slots()
        b_lo = self.brick_coord[slots].double() * self.brick_size_m
        b_hi = b_lo + self.brick_size_m
        inside = ((b_hi >= lo) & (b_lo <= hi)).all(1)
        return slots[inside]

    def bricks_in_frustum(self, K, T_W_C, width: int, height: int, near_m: float, far_m: float) -> torch.Tensor:
        """Slots (M,) int64, on the map device, of bricks whose bounding sphere meets the pinhole
        frustum of camera K (3, 3), pose T_W_C (4, 4) (numeric numpy arrays or tensors on any
        device, checked as float64), image width x height (pixel edges at -0.5 and width - 0.5),
        depth range [near_m, far_m]. Every brick that meets the frustum is returned (a sphere
        against the six planes: bricks near an edge of the frustum may come along). ValueError
        for a bad K or pose, a size below 1 pixel or a depth range other than 0 <= near_m < far_m."""
        from .frames import check_intrinsics, check_pose
        as_np = lambda x: x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x   # noqa: E731
        K = torch.from_numpy(check_intrinsics(as_np(K), allow_skew=True)).to(self.device)
        T = torch.from_numpy(check_pose(as_np(T_W_C), "T_W_C")).to(self.device)
        if not (int(width) >= 1 and int(height) >= 1):
            raise ValueError(f"image size must be at least 1x1 pixels, got {width}x{height}")
        if not (math.isfinite(near_m) and math.isfinite(far_m) and 0 <= near_m < far_m):
            raise ValueError(f"depth range must satisfy 0 <= near_m < far_m, got [{near_m}, {far_m}]")
        slots = self.alive_slots()
        c_w = (self.brick_coord[slots].double() + 0.5) * self.brick_size_m
        c = (c_w - T[:3, 3]) @ T[:3, :3]                    # world -> camera: R^T (p - t)
        r = math.sqrt(3) * self.brick_size_m / 2
        ok = spheres_in_frustum(c, r, K, int(width), int(height), near_m, far_m)
        return slots[ok]

    def voxel_centers(self, slots: torch.Tensor) -> torch.Tensor:
        """World centres (N, 512, 3) float32 of the voxels of bricks (N,) int64, metres, on the map
        device."""
        base = self.brick_coord[slots].long() * BRICK
        idx = base[:, None, :] + VOXEL_OFFSETS.to(self.device)[None]
        return ((idx.double() + 0.5) * self.voxel_size_m).float()


def spheres_in_frustum(centres_cam: torch.Tensor, radius_m: float, K, width: int, height: int,
                       near_m: float, far_m: float) -> torch.Tensor:
    """(N,) bool on the centres' device: whether spheres of radius_m around centres_cam (N, 3)
    float64 (any float dtype is read as float64; camera frame, optical axes) meet the pinhole
    frustum of K (3, 3) numpy array or tensor, any float dtype and device (skew K[0, 1] included),
    width x height pixels (pixel edges at -0.5 and width - 0.5) and depth range [near_m, far_m];
    tested against the six planes, so spheres near a frustum edge may come along."""
    fx, s, fy = float(K[0, 0]), float(K[0, 1]), float(K[1, 1])
    cx, cy = float(K[0, 2]), float(K[1, 2])
    # Inward normals of the four side planes (through the optical centre): n . p >= 0 inside. The
    # left edge u = fx X/Z + s Y/Z + cx = -0.5 is the plane fx X + s Y + (cx + 0.5) Z = 0, and so on.
    n = torch.tensor([[fx, s, cx + 0.5], [-fx, -s, width - 0.5 - cx], [0.0, fy, cy + 0.5],
                      [0.0, -fy, height - 0.5 - cy]], dtype=torch.float64, device=centres_cam.device)
    n = n / n.norm(dim=1, keepdim=True)
    c = centres_cam.double()
    return ((c @ n.T) > -radius_m).all(1) & (c[:, 2] > near_m - radius_m) & (c[:, 2] < far_m + radius_m)


def combine_children_torch(octree: SparseVoxelOctree, ids: torch.Tensor, kid_ids: torch.Tensor) -> None:
    """Set the summaries of parent nodes ids (P,) int64 from their children kid_ids (P, 8) int64
    (node ids, -1 where absent; a pruned child counts as observed free space), on the octree's
    device. Parents are taken in the order given, level by level, so a parent listed after its
    own child parents reads that child's new values (ids of one level must be contiguous).
    (vx_combine_children in kernels/cpu/fusion.cpp is the compiled twin that native.refresh_closure_cpp
    runs, strictly sequential, same result.)"""
    if ids.numel() == 0:
        return
    _, counts = torch.unique_consecutive(morton.level_of(octree.node_key[ids]), return_counts=True)
    start = 0
    for n in counts.tolist():
        i, k = ids[start:start + n], kid_ids[start:start + n]
        start += n
        has = k >= 0
        safe = k.clamp_min(0)
        pruned = ((octree.node_free_mask[i].long()[:, None] >> torch.arange(8, device=ids.device)) & 1).bool()
        kid_occ = torch.where(has, octree.node_max_occ[safe], torch.full_like(safe, 0, dtype=torch.float32) + UNKNOWN_OCC)
        kid_occ = torch.where(pruned & ~has, torch.full_like(kid_occ, octree.free_logodds), kid_occ)
        octree.node_max_occ[i] = kid_occ.amax(1)
        kid_tsdf = torch.where(has, octree.node_min_abs_tsdf[safe], torch.ones_like(kid_occ))
        octree.node_min_abs_tsdf[i] = kid_tsdf.amin(1)
        octree.node_observed[i] = ((has & octree.node_observed[safe]) | (pruned & ~has)).any(1)


def brick_summaries_torch(octree: SparseVoxelOctree, slots: torch.Tensor):
    """Per-brick summaries of alive slots (N,) int64 on the octree's device: (max occupancy over
    seen voxels (N,) float32, -inf if none; min |TSDF| over weighted voxels (N,) float32, 1 if
    none; observed (N,) bool). native.brick_summaries_cpp is the compiled twin."""
    w = octree.attrs["weight"][slots].float()
    occ = octree.attrs["occ"][slots].float()
    tsdf = octree.attrs["tsdf"][slots].float()
    seen = (w > 0) | (occ != 0)
    return (torch.where(seen, occ, torch.full_like(occ, UNKNOWN_OCC)).amax(1),
            torch.where(w > 0, tsdf.abs(), torch.ones_like(tsdf)).amin(1), seen.any(1))


def _first_occurrence(inv: torch.Tensor, n_unique: int) -> torch.Tensor:
    """(N,) bool, True at the first position of each distinct value of inv (N,) int64."""
    first = torch.full((n_unique,), inv.numel(), dtype=torch.int64, device=inv.device)
    first.scatter_reduce_(0, inv, torch.arange(inv.numel(), device=inv.device), reduce="amin")
    out = torch.zeros(inv.numel(), dtype=torch.bool, device=inv.device)
    out[first] = True
    return out
