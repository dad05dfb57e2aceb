"""Versioned map files: one .npz (zip of deflated .npy arrays), never pickle.

Contents: `header` (UTF-8 JSON as uint8: format, version, config, frame ids, attribute specs),
and the compacted map: node keys and summaries, brick coordinates, and one array per registered
voxel attribute for the live bricks. Loading checks format and version, every array's dtype and
shape against the header, and turns a truncated or foreign file into a ValueError.
"""
from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .octree import (ATTRIBUTE_DTYPES, BRICK_VOXELS, CORE_ATTRIBUTES, AttributeSpec, SparseVoxelOctree,
                     check_attribute_spec)

FORMAT = "voxmap_ros.map"
VERSION = 1
ZIP_LEVEL = 1               # zlib level of the archive's members (files of stored members load too)
_HEADER_FIELDS = {"voxel_size_m": (int, float), "levels": int, "free_logodds": (int, float),
                  "num_nodes": int, "num_bricks": int, "attributes": list, "extra": dict}


@dataclass
class MapFileSnapshot:
    """A copy of everything a map file holds (numpy arrays on the host, written in this order):
    taken with the map to oneself (snapshot_octree), written without it (write_snapshot)."""
    arrays: dict


def save_octree(octree: SparseVoxelOctree, path: str | Path, extra: dict | None = None) -> Path:
    """Write the octree (all attributes) and `extra` JSON metadata to `path` (.npz)."""
    check_map_path(path)                  # a bad path fails before the copy, not after
    return write_snapshot(snapshot_octree(octree, extra), path)


def check_map_path(path: str | Path) -> Path:
    """`path` as a Path if a map file can be written there; ValueError naming what is wrong."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"cannot save the map to {path}: it is a directory (give a file name such as {path / 'map.npz'})")
    if not path.parent.is_dir():
        raise ValueError(f"cannot save the map to {path}: folder {path.parent} does not exist")
    return path


def snapshot_octree(octree: SparseVoxelOctree, extra: dict | None = None) -> MapFileSnapshot:
    """Copy the octree's live nodes and bricks (all attributes) and `extra` JSON metadata; costs
    a copy of the live voxel data (9 B per voxel with the core attributes: 0.4 GB for 83k bricks)."""
    octree.flush_summaries()
    keys, ids = octree.table.items()
    order = torch.argsort(keys)
    keys, ids = keys[order], ids[order].long()
    slots = octree.node_brick[ids].long()
    is_brick = slots >= 0
    brick_slots = slots[is_brick]
    header = {"format": FORMAT, "version": VERSION, "voxel_size_m": octree.voxel_size_m, "levels": octree.levels,
              "free_logodds": octree.free_logodds, "num_nodes": int(keys.numel()),
              "num_bricks": int(brick_slots.numel()),
              "attributes": [{"name": s.name, "dtype": str(s.dtype).replace("torch.", ""),
                              "channels": list(s.channels), "fill": s.fill} for s in octree.specs.values()],
              "extra": extra or {}}
    arrays = {
        "header": np.frombuffer(json.dumps(header).encode(), np.uint8),
        "node_key": keys.cpu().numpy(),
        "node_is_brick": is_brick.cpu().numpy(),
        "node_max_occ": octree.node_max_occ[ids].cpu().numpy(),
        "node_min_abs_tsdf": octree.node_min_abs_tsdf[ids].cpu().numpy(),
        "node_observed": octree.node_observed[ids].cpu().numpy(),
        "node_free_mask": octree.node_free_mask[ids].cpu().numpy(),
    }
    for name, t in octree.attrs.items():
        # Every registrable dtype maps 1:1 onto a numpy dtype (octree.ATTRIBUTE_DTYPES).
        arrays[f"attr_{name}"] = t[brick_slots].cpu().numpy()
    return MapFileSnapshot(arrays)


def write_snapshot(snapshot: MapFileSnapshot, path: str | Path) -> Path:
    """Write a MapFileSnapshot to `path` (.npz), atomically (a reader never sees half a file)."""
    if not isinstance(snapshot, MapFileSnapshot):
        raise ValueError(f"write_snapshot needs a MapFileSnapshot (Mapper.snapshot()), got {type(snapshot).__name__}")
    path = check_map_path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        # Deflate at level 1: observed free space (TSDF +1, no colour) is most of a LiDAR map and
        # shrinks ~13x (386 -> 29 MB for 200 Livox scans at 10 cm) for ~1.4 s of one core.
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=ZIP_LEVEL) as z:
            for name, a in snapshot.arrays.items():
                with z.open(name + ".npy", "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.ascontiguousarray(a), allow_pickle=False)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_header(path: str | Path) -> dict:
    """Header of a map file (validated format and version)."""
    with _open(path) as z:
        return _header(z, path)


def load_octree(path: str | Path, device: str | torch.device = "cpu",
                reserve_bricks: int = 0) -> tuple[SparseVoxelOctree, dict]:
    """Read a map file into a new octree on `device`. `reserve_bricks` > 0 reserves pools as in
    SparseVoxelOctree, at least twice the file's bricks (room to grow). Returns (octree, header)."""
    with _open(path) as z:
        h = _header(z, path)
        n_nodes, n_bricks = h["num_nodes"], h["num_bricks"]
        expect = {"node_key": ("int64", (n_nodes,)), "node_is_brick": ("bool", (n_nodes,)),
                  "node_max_occ": ("float32", (n_nodes,)), "node_min_abs_tsdf": ("float32", (n_nodes,)),
                  "node_observed": ("bool", (n_nodes,)), "node_free_mask": ("uint8", (n_nodes,))}
        specs = []
        for a in h["attributes"]:
            if a["dtype"] not in ATTRIBUTE_DTYPES:
                raise ValueError(f"{path}: attribute '{a['name']}' has unsupported dtype {a['dtype']}")
            spec = AttributeSpec(a["name"], ATTRIBUTE_DTYPES[a["dtype"]], tuple(a["channels"]), a["fill"])
            try:
                check_attribute_spec(spec)
            except ValueError as e:
                raise ValueError(f"{path}: {e}") from None
            specs.append(spec)
            expect[f"attr_{a['name']}"] = (a["dtype"], (n_bricks, BRICK_VOXELS, *a["channels"]))
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"{path}: an attribute appears twice in the header ({names})")
        for core in CORE_ATTRIBUTES:        # a map without them would load with made-up values
            if core not in specs:
                found = next((s for s in specs if s.name == core.name), None)
                raise ValueError(f"{path}: core attribute '{core.name}' is "
                                 f"{'missing' if found is None else f'{found}, expected {core}'}")
        arrays = {}
        for name, (dtype, shape) in expect.items():
            arrays[name] = _array(z, name, path, expect=(dtype, tuple(shape)))
    if int(arrays["node_is_brick"].sum()) != n_bricks:
        raise ValueError(f"{path}: header says {n_bricks} bricks, node table marks {int(arrays['node_is_brick'].sum())}")
    _check_node_keys(arrays["node_key"], arrays["node_is_brick"], h["levels"], path)
    octree = SparseVoxelOctree(h["voxel_size_m"], h["levels"], device, initial_bricks=max(16, n_bricks),
                               free_logodds=h["free_logodds"],
                               reserve_bricks=max(reserve_bricks, 2 * n_bricks) if reserve_bricks else 0)
    for s in specs:
        octree.register_attribute(s)
    dev = octree.device
    keys = torch.from_numpy(arrays["node_key"]).to(dev)
    is_brick = torch.from_numpy(arrays["node_is_brick"]).to(dev)
    from . import morton
    slots, _ = octree.allocate_bricks(morton.decode(keys[is_brick])[0])
    parents = keys[~is_brick]
    pid = octree._ensure_nodes(parents) if parents.numel() else parents
    ids = torch.empty_like(keys)
    ids[is_brick] = octree.brick_node[slots].long()
    ids[~is_brick] = pid
    for name in ("node_max_occ", "node_min_abs_tsdf", "node_observed", "node_free_mask"):
        getattr(octree, name)[ids] = torch.from_numpy(arrays[name]).to(dev)
    for s in specs:
        octree.attrs[s.name][slots] = torch.from_numpy(arrays[f"attr_{s.name}"]).to(dev)
    octree.brick_dirty[slots] = True
    return octree, h


def _check_node_keys(keys: np.ndarray, is_brick: np.ndarray, levels: int, path) -> None:
    """Keys (N,) int64 must be valid (level in 0..levels, nothing above the level bits), unique,
    and of level 0 exactly where the file marks a brick: otherwise loading would merge or
    misplace nodes silently."""
    from . import morton
    level = keys >> morton.LEVEL_SHIFT
    if keys.size and (int(keys.min()) < 0 or int(level.max()) > levels):
        raise ValueError(f"{path}: node keys outside the key layout (levels 0..{levels}); corrupted file?")
    if np.unique(keys).size != keys.size:
        raise ValueError(f"{path}: {keys.size - np.unique(keys).size} duplicate node keys; corrupted file?")
    if not np.array_equal(level == 0, is_brick):
        raise ValueError(f"{path}: node_is_brick disagrees with the node keys' levels "
                         f"({int(np.sum((level == 0) != is_brick))} nodes); corrupted file?")


def _open(path) -> zipfile.ZipFile:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"map file {path} does not exist")
    try:
        return zipfile.ZipFile(path)
    except Exception as e:      # untrusted bytes: BadZipFile, OSError, NotImplementedError (a damaged version field), ...
        raise ValueError(f"{path} is not a voxmap map file (not a readable npz archive: {e}); "
                         f"truncated or foreign file?") from None


def _array(z: zipfile.ZipFile, name: str, path, expect: tuple[str, tuple] | None = None) -> np.ndarray:
    """Member `name` as an array; with expect = (dtype name, shape), refused unless it has them,
    judged from its .npy header before any data is read where the header's version allows (a
    damaged header cannot make the loader allocate what it claims)."""
    spec = _member(z, name, path, _npy_header) if expect is not None else None
    if spec is not None:
        _check_spec(spec, expect, name, path)
    a = _member(z, name, path, _npy_array)
    if expect is not None and spec is None:
        _check_spec((a.dtype, a.shape), expect, name, path)
    return a


def _member(z: zipfile.ZipFile, name: str, path, read):
    """read(file object) on member `name`, its failures as ValueErrors naming the member."""
    try:
        with z.open(name + ".npy") as f:
            return read(f)
    except KeyError:
        raise ValueError(f"{path}: missing array '{name}'") from None
    except Exception as e:      # untrusted bytes: any parse failure (bad zip, npy header, zlib) is bad input
        raise ValueError(f"{path}: array '{name}' is unreadable ({type(e).__name__}: {e}); "
                         f"truncated or corrupted file?") from None


def _npy_array(f) -> np.ndarray:
    # Streamed from the member (no bytes copy first: 2.5x faster for deflated members); read to
    # the member's end so that the zip's CRC check runs.
    a = np.lib.format.read_array(f, allow_pickle=False)
    if f.read(1):
        raise ValueError("data after the array")
    return a


def _npy_header(f):
    """(dtype, shape) from a .npy header, or None for a format version without a public header
    reader (3.0; read_array still parses it)."""
    fmt = np.lib.format
    reader = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}.get(fmt.read_magic(f))
    if reader is None:
        return None
    shape, _, dtype = reader(f)
    return dtype, shape


def _check_spec(spec, expect: tuple[str, tuple], name: str, path) -> None:
    dtype, shape = spec
    if str(dtype) != expect[0] or tuple(shape) != tuple(expect[1]):
        raise ValueError(f"{path}: array '{name}' is {dtype}{tuple(shape)}, expected {expect[0]}{tuple(expect[1])}")


def _header(z: zipfile.ZipFile, path) -> dict:
    raw = _array(z, "header", path)
    try:
        h = json.loads(raw.tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: header is not valid JSON ({e})") from None
    if not isinstance(h, dict):
        raise ValueError(f"{path}: not a voxmap map (header is a JSON {type(h).__name__}, expected an object)")
    if h.get("format") != FORMAT:
        raise ValueError(f"{path}: not a voxmap map (format {h.get('format')!r}, expected {FORMAT!r})")
    if h.get("version") != VERSION:
        raise ValueError(f"{path}: map format version {h.get('version')} is not supported (expected {VERSION})")
    for key, kind in _HEADER_FIELDS.items():
        if not isinstance(h.get(key), kind) or isinstance(h.get(key), bool):
            raise ValueError(f"{path}: header field '{key}' is {h.get(key)!r}, expected {kind}")
    for a in h["attributes"]:
        if not (isinstance(a, dict) and isinstance(a.get("name"), str) and isinstance(a.get("dtype"), str)
                and isinstance(a.get("channels"), list) and all(isinstance(c, int) and c > 0 for c in a["channels"])
                and isinstance(a.get("fill"), (int, float))):
            raise ValueError(f"{path}: malformed attribute entry in the header: {a!r}")
    return h
