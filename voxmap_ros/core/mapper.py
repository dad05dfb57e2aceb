"""Mapper: owns the octree and the stages; the one API every front end (CLI, node) uses."""
from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config import VoxmapConfig, iter_fields
from ..types import Frame, Grid2D, MeshData
from . import frames as frame_checks
from . import integrate, io, mesh, occupancy
from .octree import SparseVoxelOctree

log = logging.getLogger(__name__)


@dataclass
class MeshUpdate:
    """What changed since the previous `update_mesh` call: `mesh` holds the triangles of the
    re-meshed bricks (tagged by brick key), `remeshed_keys` (M,) int64 the bricks whose triangles
    it replaces (a brick may now have none), `removed_keys` (R,) int64 bricks that no longer exist;
    all on the map device."""
    mesh: mesh.BrickMesh
    remeshed_keys: torch.Tensor
    removed_keys: torch.Tensor


@dataclass
class MeshJob:
    """Bricks to re-mesh, gathered by Mapper.prepare_mesh_update: their blocks (a copy), their
    keys (M,) int64 and the keys (R,) int64 of bricks removed since the previous update; all on
    the map device."""
    blocks: list
    keys: torch.Tensor
    removed: torch.Tensor


class FrameTimes:
    """Per-frame times (ms) over every frame in bounded memory: exact values for the first
    EXACT_MAX frames, then counts in log-spaced bins (HIST_STEP apart, quantiles within 0.25 %),
    so a node that runs for weeks does not grow a list by 30 floats a second."""
    EXACT_MAX = 100_000
    HIST_LO_MS, HIST_STEP, HIST_BINS = 1e-3, 1.005, 3600        # 1 us .. ~64 s; beyond lands in the ends

    def __init__(self):
        self._exact: list[float] = []
        self._hist: np.ndarray | None = None
        self.count = 0

    def append(self, ms: float) -> None:
        self.count += 1
        if self._hist is None:
            self._exact.append(float(ms))
            if len(self._exact) > self.EXACT_MAX:
                self._hist = np.zeros(self.HIST_BINS, np.int64)
                np.add.at(self._hist, self._bins(np.asarray(self._exact)), 1)
                self._exact = []
        else:
            self._hist[self._bins(np.asarray([ms]))[0]] += 1

    def _bins(self, ms: np.ndarray) -> np.ndarray:
        k = np.floor(np.log(np.maximum(ms, self.HIST_LO_MS) / self.HIST_LO_MS) / math.log(self.HIST_STEP))
        return np.clip(k, 0, self.HIST_BINS - 1).astype(np.int64)

    def quantile(self, q: float) -> float | None:
        """The q-quantile (0..1) of the times, None before the first frame."""
        if self.count == 0:
            return None
        if self._hist is None:
            return float(np.quantile(np.asarray(self._exact, np.float64), q))
        k = int(np.searchsorted(np.cumsum(self._hist), q * (self.count - 1), side="right"))
        return float(self.HIST_LO_MS * self.HIST_STEP ** (k + 0.5))       # the bin's geometric centre


@dataclass
class MapperStats:
    frames_integrated: int = 0
    frames_rejected: int = 0
    frames_empty: int = 0             # valid frames without any reading in range: nothing fused
    bricks_beyond_mesh_range: int = 0  # left out of the last extract_mesh (mesh.inside_edge_key_range)
    ms_per_frame: FrameTimes = field(default_factory=FrameTimes)

    def summary(self) -> dict:
        return {"frames_integrated": self.frames_integrated, "frames_rejected": self.frames_rejected,
                "frames_empty": self.frames_empty, "bricks_beyond_mesh_range": self.bricks_beyond_mesh_range,
                "ms_per_frame_median": self.ms_per_frame.quantile(0.5),
                "ms_per_frame_p95": self.ms_per_frame.quantile(0.95)}


# What a map file's contents fix: its voxels have this size, its octree these levels, its TSDF
# values are fractions of this truncation, its coordinates are in this frame.
MAP_FILE_FIELDS = ("map.voxel_size_m", "map.octree_levels", "tsdf.trunc_vox", "map.frame_id")


def with_map_file_fields(config: VoxmapConfig, file_config: VoxmapConfig) -> VoxmapConfig:
    """A copy of `config` with the MAP_FILE_FIELDS of `file_config` (a map file's)."""
    out = copy.deepcopy(config)
    for name in MAP_FILE_FIELDS:
        out.set(name, file_config.get(name))
    return out


def map_file_overrides(config: VoxmapConfig, file_config: VoxmapConfig) -> list[str]:
    """'name=file value (not config value)' for each MAP_FILE_FIELDS entry the two differ in."""
    return [f"{n}={file_config.get(n)!r} (not {config.get(n)!r})" for n in MAP_FILE_FIELDS
            if config.get(n) != file_config.get(n)]


class Mapper:
    """Fuses frames into a SparseVoxelOctree and serves meshes, occupancy and map files.

    Not thread-safe: a front end calls it from one worker thread.
    """

    def __init__(self, config: VoxmapConfig | None = None, octree: SparseVoxelOctree | None = None):
        self.config = config or VoxmapConfig()
        self.config.validate()
        self.device = torch.device(self.config.map.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("map.device is 'cuda' but torch sees no CUDA device; use 'cpu'")
        self.params = integrate.FusionParams.from_config(self.config)
        self.octree = octree or self._new_octree()
        self.stats = MapperStats()
        self.last_sensor_position_m: np.ndarray | None = None
        self._mesh_store = mesh.BrickMesh.empty(self.device)
        self._removed_since_mesh: list[torch.Tensor] = []
        self._meshed_once = False                  # prepare_mesh_update has run (see _note_removed)
        self._backend = self._choose_backend()
        self._use_backend_summaries()

    # ------------------------------------------------------------------ configuration
    def _choose_backend(self) -> str:
        """'cpp' (compiled C++ kernels, CPU maps), 'triton' (Triton RGB-D voxel update, CUDA maps;
        CPU maps only under TRITON_INTERPRET=1) or 'torch' (the complete pure-torch path)."""
        wanted = self.config.map.backend
        if wanted == "torch":
            return "torch"
        if wanted == "triton" or (wanted == "auto" and self.device.type == "cuda"):
            from . import triton_kernels
            if triton_kernels.usable_on(self.device):
                return "triton"
            why = triton_kernels.unavailable_reason() or f"map.device is '{self.device}', not CUDA"
            if wanted == "triton":
                raise ValueError(f"map.backend is 'triton' but Triton kernels cannot run here: {why} "
                                 f"(on a CPU map only under TRITON_INTERPRET=1)")
            log.info("Triton kernels unavailable (%s); using the torch backend", why)
            return "torch"
        if self.device.type != "cpu":
            return "torch"
        try:
            from . import native
            ok, why = native.available(), getattr(native, "unavailable_reason", lambda: "")()
        except ImportError as e:            # a source tree without kernels: the torch path is complete
            ok, why = False, str(e)
        if ok:
            return "cpp"
        if wanted == "cpp":
            raise ValueError(f"map.backend is 'cpp' but the compiled kernels are unavailable: {why}")
        log.info("compiled kernels unavailable (%s); using the torch backend", why)
        return "torch"

    def _use_backend_summaries(self) -> None:
        if self._backend == "cpp":
            from . import morton, native
            self.octree.use_kernels(native.brick_summaries_cpp, native.hash_find_cpp, native.bricks_free_cpp,
                                    native.hash_insert_absent_cpp, native.refresh_closure_cpp)
            # Process-wide and never undone here: the twins are bitwise equal, so a torch-backend
            # Mapper in the same process computes the same keys either way.
            morton.use_cpu_kernels(native.morton_encode_cpp, native.morton_decode_cpp, native.morton_ancestors_cpp)
        else:
            self.octree.use_kernels(None, None)

    @property
    def backend(self) -> str:
        return self._backend

    def set_config(self, config: VoxmapConfig) -> None:
        """Adopt a changed config. Only run-time parameters (thresholds, weights, radii) may
        differ from the current config: anything else (voxel size, device, backend, ...) shaped
        the map and its kernels when they were made. ValueError and nothing changed when the
        config is invalid or changes anything else."""
        config.validate()
        fixed = [(n, v, new) for (n, v, f), (_, new, _) in zip(iter_fields(self.config), iter_fields(config))
                 if not f.metadata["runtime"] and new != v]
        if fixed:
            n, v, new = fixed[0]
            raise ValueError(f"{n} cannot change on a live map ({v!r} -> {new!r}): not a runtime parameter")
        params = integrate.FusionParams.from_config(config)
        old = self.config
        self.config, self.params = config, params
        # Pruned free space stands for voxels at the lower clamp: it follows the clamp.
        if self.octree.free_logodds != float(params.l_min):
            self.octree.free_logodds = float(params.l_min)
            self.octree.refresh_free_summaries()
        if (old.tsdf.min_weight_mesh, old.tsdf.mesh_max_jump_vox) != (config.tsdf.min_weight_mesh,
                                                                     config.tsdf.mesh_max_jump_vox):
            self.octree.brick_dirty[self.octree.alive_slots()] = True     # every brick's mesh changes

    # ------------------------------------------------------------------ integration
    def integrate(self, frame: Frame) -> int:
        """Fuse one frame (RGB-D and/or LiDAR): its arrays are numpy (host), shapes and dtypes as
        in types.Frame (depth (H, W) uint16 / float32, rgb (H, W, 3) uint8, points (N, 3) float32 /
        float64; K (3, 3) and T_W_S (4, 4) of any real dtype). Validates everything before touching the map and raises
        ValueError on bad input, leaving the map unchanged. Returns bricks visited."""
        t0 = time.perf_counter()
        rgbd = lidar = None
        visited, summarised = [], []           # summarised: slots whose own summaries are fresh
        # The compiled kernels can write their bricks' summaries while the bricks are in cache
        # (cheaper than a later pass over them), which pays when summaries are read after every
        # frame. When nothing read them since the last frame, later frames will likely rewrite
        # the same bricks before the next query: leave the summaries to that query (lazy).
        fuse = self._backend == "cpp" and not self.octree.summaries_pending
        try:
            if not isinstance(frame, Frame):
                raise ValueError(f"integrate() takes a voxmap_ros.types.Frame, got {type(frame).__name__}")
            if frame.depth is not None:
                rgbd = frame_checks.prepare_rgbd(frame, self.config.rgbd.depth_scale, self.device)
            if frame.points is not None:
                lidar = frame_checks.prepare_lidar(frame, self.device)
            if rgbd is None and lidar is None:
                raise ValueError("frame has neither depth nor points")
            # The kernels reject, before writing, what only they can see (a frame beyond the key range);
            # with both parts, the LiDAR part's extent is checked before the RGB-D part is fused.
            if rgbd is not None and lidar is not None and lidar[0].shape[0] > 0:
                integrate.check_lidar_extent(*lidar, self.params, span_limit=self._backend != "cpp")
            if rgbd is not None:
                (summarised if fuse else visited).append(self._integrate_rgbd(*rgbd, fuse))
            if lidar is not None and lidar[0].shape[0] > 0:
                (summarised if fuse else visited).append(self._integrate_lidar(*lidar, fuse))
        except ValueError:
            self.stats.frames_rejected += 1
            raise
        none = torch.zeros(0, dtype=torch.int64, device=self.device)
        stale = torch.cat(visited) if visited else none
        fresh = torch.cat(summarised) if summarised else none
        slots = torch.cat([stale, fresh])
        self.octree.brick_dirty.index_fill_(0, slots, True)
        self.octree.mark_stale(stale)               # summaries refresh lazily, on the next query
        self.octree.mark_parents_stale(fresh)
        if slots.numel():
            # Only a frame that observed something moves the clearing centre: an empty cloud or a
            # frame without readings in range is a no-op, wherever its pose says the sensor is.
            pos = np.asarray(frame.T_W_S, dtype=np.float64)[:3, 3]
            self.last_sensor_position_m = pos
            if self.config.map.clearing_radius_m > 0:
                self.clear_far(pos, self.config.map.clearing_radius_m)
            self.stats.frames_integrated += 1
        else:
            self.stats.frames_empty += 1
        self.stats.ms_per_frame.append((time.perf_counter() - t0) * 1000.0)
        return int(slots.numel())

    def _integrate_rgbd(self, depth_m, rgb, K, T, summaries: bool):
        """Visited brick slots; with `summaries` (compiled kernel only) it also refreshes the own
        summaries of those it changes."""
        if self._backend == "cpp":
            from . import native
            return native.integrate_rgbd_cpp(self.octree, depth_m, rgb, K, T, self.params, summaries)
        if self._backend == "triton":
            from . import triton_fusion
            return triton_fusion.integrate_rgbd_triton(self.octree, depth_m, rgb, K, T, self.params)
        return integrate.integrate_rgbd_torch(self.octree, depth_m, rgb, K, T, self.params)

    def _integrate_lidar(self, points, T, summaries: bool):
        """Touched brick slots; with `summaries` (compiled kernel only) it also refreshes their
        own summaries."""
        if self._backend == "cpp":
            from . import native
            return native.integrate_lidar_cpp(self.octree, points, T, self.params, summaries)
        return integrate.integrate_lidar_torch(self.octree, points, T, self.params)

    # ------------------------------------------------------------------ memory control
    def clear_far(self, center_m, radius_m: float) -> int:
        """Drop bricks (and pruned free space) farther than radius_m (> 0) from center_m (3,)
        metres in the map frame (any numeric array-like on the host: numpy, list, CPU tensor; read
        as float64), judged by their centres. Returns bricks dropped."""
        try:
            c = np.asarray(center_m, dtype=np.float64)
            r = float(radius_m)
        except (TypeError, ValueError) as e:
            raise ValueError(f"clear_far needs center_m (3,) and radius_m as numbers: {e}") from None
        if c.shape != (3,) or not np.isfinite(c).all():
            raise ValueError(f"clear_far center_m must be 3 finite numbers, got {c.tolist()}")
        if not (math.isfinite(r) and r > 0):
            raise ValueError(f"clear_far radius_m must be a positive number, got {radius_m}")
        centre = torch.from_numpy(c)
        n = self._erase(self.octree.bricks_outside_radius(centre, r))
        self.octree.forget_free_outside_radius(centre, r)        # pruned free space beyond r goes too
        return n

    def prune(self) -> int:
        """Collapse confidently-free bricks into their parents. Returns bricks removed."""
        threshold = self.params.l_min + 1e-3
        if threshold >= 0:                 # occupancy.clamp_min ~0.5: no voxel is ever confidently free
            return 0
        before = self.octree.alive_slots()
        keys_before = self.octree.node_key[self.octree.brick_node[before].long()]
        n = self.octree.prune_free(threshold)
        if n:
            alive = self.octree.table.lookup(keys_before) >= 0
            self._note_removed(keys_before[~alive])
        return n

    def _erase(self, slots: torch.Tensor) -> int:
        if slots.numel() == 0:
            return 0
        self._note_removed(self.octree.node_key[self.octree.brick_node[slots].long()])
        self.octree.erase_bricks(slots)
        return int(slots.numel())

    def _note_removed(self, keys: torch.Tensor) -> None:
        # Before the first mesh update every brick is still dirty (meshed by that update), so
        # nothing needs remembering: a node that never publishes a mesh keeps no growing list.
        if self._meshed_once:
            self._removed_since_mesh.append(keys)

    def _new_octree(self) -> SparseVoxelOctree:
        m = self.config.map
        return SparseVoxelOctree(m.voxel_size_m, m.octree_levels, self.device, m.initial_bricks,
                                 free_logodds=self.params.l_min, reserve_bricks=m.reserve_bricks)

    def clear(self) -> None:
        """Forget the whole map (configuration kept)."""
        self.octree = self._new_octree()
        self._use_backend_summaries()
        removed = self._mesh_store.tri_brick_keys.unique()
        self._mesh_store = mesh.BrickMesh.empty(self.device)
        self._removed_since_mesh = [removed]

    # ------------------------------------------------------------------ outputs
    def update_mesh(self) -> MeshUpdate:
        """Re-mesh only the bricks changed since the previous call (and the neighbours whose
        cells read them). The accumulated result equals `extract_mesh()`."""
        return self.finish_mesh_update(self.prepare_mesh_update())

    def prepare_mesh_update(self) -> MeshJob:
        """First half of update_mesh, the part that reads the map: which bricks to re-mesh, and
        a copy of their padded blocks. Call it with the map to yourself (the node holds its map
        lock); finish_mesh_update then runs without it."""
        o = self.octree
        dirty = o.brick_dirty.nonzero().squeeze(1)
        todo = mesh.affected_by(o, dirty)
        removed = (torch.unique(torch.cat(self._removed_since_mesh)) if self._removed_since_mesh
                   else torch.zeros(0, dtype=torch.int64, device=self.device))
        # Removing a brick also changes the cells of its -x/-y/-z neighbours.
        if removed.numel():
            from . import morton
            coords, _ = morton.decode(removed)
            nb = o.lookup_bricks((coords[:, None, :] - mesh._PAD_OFFSETS.to(coords.device)[None]).reshape(-1, 3))
            extra = torch.unique(nb[nb >= 0])
            todo = torch.cat([todo, extra[~torch.isin(extra, todo)]])
        keys = o.node_key[o.brick_node[todo].long()]
        # Every brick in `keys` loses its old triangles; only those that can have a surface are meshed.
        wmin, backend = self.config.tsdf.min_weight_mesh, self._mesh_backend()
        slots, nb = mesh.meshable(o, todo, wmin, backend)
        job = MeshJob(mesh.gather(o, slots, wmin, backend=backend, nb=nb, max_jump=self._mesh_max_jump()),
                      keys, removed)
        # Only now, with nothing left to fail: a failed call leaves the changes for the next one.
        o.brick_dirty[dirty] = False
        self._removed_since_mesh = []
        self._meshed_once = True
        return job

    def finish_mesh_update(self, job: MeshJob) -> MeshUpdate:
        """Second half of update_mesh: marching cubes on the gathered blocks, merged into the mesh
        store. Needs no access to the map, but mesh calls must not overlap (the node serialises them)."""
        fresh = mesh.mesh_blocks(job.blocks, self.config.map.voxel_size_m, self.device)
        stale = torch.isin(self._mesh_store.tri_brick_keys, torch.cat([job.keys, job.removed]))
        self._mesh_store = mesh.BrickMesh.cat([self._mesh_store.select(~stale), fresh])
        return MeshUpdate(fresh, job.keys, job.removed)

    def mesh_store(self) -> mesh.BrickMesh:
        """Triangles of the whole map as of the last `update_mesh` call."""
        return self._mesh_store

    def extract_mesh(self) -> MeshData:
        """Full-map mesh, welded, freshly computed from every brick (but those beyond the weld
        keys' range, counted in stats.bricks_beyond_mesh_range)."""
        o, wmin, backend = self.octree, self.config.tsdf.min_weight_mesh, self._mesh_backend()
        alive = o.alive_slots()
        self.stats.bricks_beyond_mesh_range = int((~mesh.inside_edge_key_range(o, alive)).sum())
        # Only bricks that can hold a surface are copied and meshed (not the free space that is
        # most of a LiDAR map: 2.4 -> 1.1 s at 5 cm for the Livox example, same mesh).
        slots, nb = mesh.meshable(o, alive, wmin, backend)
        return mesh.mesh_bricks(o, slots, wmin, backend=backend, max_jump=self._mesh_max_jump(), nb=nb).to_mesh()

    def _mesh_max_jump(self) -> float:
        t = self.config.tsdf
        return mesh.max_jump_tsdf(t.mesh_max_jump_vox, t.trunc_vox)

    def _mesh_backend(self) -> str:
        """'cpp' (kernels/cpu/mesh.cpp) with the compiled backend on a CPU map, else 'torch'."""
        return "cpp" if self._backend == "cpp" and self.device.type == "cpu" else "torch"

    def occupancy_grid(self) -> Grid2D:
        g = self.config.grid
        return occupancy.project_2d(self.octree, g.z_min_m, g.z_max_m, self._occ_threshold())

    def occupied_points(self, level: int = 0):
        """(points (N, 3) float32, colors (N, 3) uint8) of occupied cells at `level` (0 = voxels,
        L in 1..map.octree_levels = octree nodes spanning 2^L bricks per axis)."""
        top = self.octree.levels
        if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or not 0 <= level <= top:
            raise ValueError(f"occupied_points level must be an integer in [0, {top}], got {level!r}")
        return occupancy.occupied_voxels(self.octree, self._occ_threshold(), level)

    def _occ_threshold(self) -> float:
        return integrate.logodds(min(max(self.config.occupancy.occupied_threshold, 1e-6), 1 - 1e-6))

    def summary(self, nodes: bool = True) -> dict:
        """Counts and sizes of the map. nodes=False leaves out the node count, which needs the
        pending summary refresh first (the expensive part; a monitor polling at 1 Hz skips it)."""
        s = self.stats.summary()
        if nodes:
            s["nodes"] = self.octree.num_nodes      # first: the refresh may grow the node pool
        s.update({"voxels": self.octree.num_voxels, "bricks": self.octree.num_bricks,
                  "map_bytes": self.octree.nbytes, "device": str(self.device), "backend": self._backend,
                  "voxel_size_m": self.config.map.voxel_size_m})
        return s

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path, frame_ids: dict | None = None) -> Path:
        """Write the whole map (all attributes, config, frame ids, version) to one .npz file."""
        return io.save_octree(self.octree, path, extra=self._file_extra(frame_ids))

    def snapshot(self, frame_ids: dict | None = None) -> io.MapFileSnapshot:
        """What `save` writes, copied (host arrays): take it with the map to yourself, write it
        with io.write_snapshot(snapshot, path) while the map goes on changing."""
        return io.snapshot_octree(self.octree, extra=self._file_extra(frame_ids))

    def _file_extra(self, frame_ids: dict | None) -> dict:
        return {"config": self.config.to_dict(), "frame_ids": frame_ids or {"map": self.config.map.frame_id}}

    @classmethod
    def load(cls, path: str | Path, device: str | None = None, reserve_bricks: int | None = None,
             config: VoxmapConfig | None = None) -> "Mapper":
        """Read a map file written by `save`. Without `config`, its stored config is used, except
        for the settings of the host it now runs on: `device` and `reserve_bricks` (map.*) when
        given. With `config` (a node's parameters), that config is used except for MAP_FILE_FIELDS,
        which the file's contents fix; `map_file_overrides(...)` says which of them differed."""
        cfg = cls.file_config(path)
        if config is not None:
            cfg = with_map_file_fields(config, cfg)
        if device is not None:
            cfg.map.device = device
        if reserve_bricks is not None:
            cfg.map.reserve_bricks = int(reserve_bricks)
        octree, _ = io.load_octree(path, cfg.map.device, reserve_bricks=cfg.map.reserve_bricks)
        return cls(cfg, octree)

    @staticmethod
    def file_config(path: str | Path) -> VoxmapConfig:
        """The config stored in map file `path`, checked against its octree's header (reads no
        voxel data). ValueError / OSError for a foreign, corrupted or missing file."""
        header = io.read_header(path)
        cfg = VoxmapConfig.from_dict(header["extra"].get("config", {}))
        for name, key in (("map.voxel_size_m", "voxel_size_m"), ("map.octree_levels", "levels")):
            if cfg.get(name) != header[key]:
                raise ValueError(f"{path}: its config says {name}={cfg.get(name)!r} but its octree has "
                                 f"{key} {header[key]!r}; corrupted file?")
        return cfg

    def save_outputs(self, out_dir: str | Path, stem: str = "") -> dict:
        """Write map file, mesh PLY, occupancy PGM+YAML and previews under out_dir; returns their
        paths (outputs.capture_outputs + outputs.write_captured, for callers that share the map)."""
        from ..outputs import write_outputs
        return write_outputs(self, out_dir, stem)
