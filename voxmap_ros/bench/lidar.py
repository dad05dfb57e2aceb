"""`voxmap bench lidar`: LiDAR occupancy + TSDF fusion, voxmap vs OctoMap, on the same scans.

Every scan is read into memory first (never timed). What each timed number covers (one scan):
    voxmap    `Mapper.integrate(frame)` (range filter, ray sampling, occupancy + TSDF update)
    octomap   `OcTree.insertPointCloud(points_world (N, 3) float64, origin (3,), maxrange,
              lazy_eval)`; the points are transformed to the world frame beforehand (OctoMap takes
              world points)
Both maps keep inner-node summaries, and both can put them off (`--summaries`):
    end        (default) both defer: voxmap marks bricks stale (refreshed on the next query),
               OctoMap inserts with lazy_eval=True; each pays once at the end of the run
               (`Octree.flush_summaries` / `OcTree.updateInnerOccupancy`), timed as
               "end_of_run_ms" and counted in the totals the "total" speed-up compares.
    every-scan both keep every scan up to date inside the timed call: voxmap flushes its
               summaries after each integrate, OctoMap inserts with lazy_eval=False.
OctoMap runs in a process of its own, driven scan by scan and timed there (bench/isolated.py says
why: in one process its freed memory slows voxmap's allocations); `--same-process` keeps it here.
Both use the same sensor model (voxmap's config: prob_hit, prob_miss, clamping thresholds,
occupancy threshold), the same minimum range (closer points dropped for both) and the same
maximum-range rule (a longer beam clears free space up to max range and marks no hit).

The occupied cells of both maps are compared at the voxel resolution: OctoMap leaves pruned at a
coarser depth are expanded to voxels, and OctoMap's key k maps to voxmap's index k - 32768 (both
grids have cell centres at (i + 0.5) * res; this is verified on a real endpoint and reported).
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from ..config import MAP_BACKENDS
from . import common, isolated

PEERS = ("octomap", "none")
SUMMARY_MODES = ("end", "every-scan")
OCTOMAP_KEY_OFFSET = 32768            # octomap::OcTreeKey of the cell at [0, res)^3 (tree_max_val, 16 levels)
DIAG_QUERY_LIMIT = 50_000             # at most this many disagreeing cells queried one by one in OctoMap


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="LiDAR dataset folder (velodyne/, poses.txt)")
    p.add_argument("--scans", type=int, default=None, help="use the first N scans (default: all)")
    p.add_argument("--voxel-size-m", type=float, default=0.1, help="voxel / OctoMap leaf edge, metres (default %(default)s)")
    p.add_argument("--max-range-m", type=float, default=50.0, help="beams are cut at this range (both systems) (default %(default)s)")
    p.add_argument("--min-range-m", type=float, default=None,
                   help="returns closer than this are dropped for both (default: voxmap's lidar.min_range_m)")
    p.add_argument("--trunc-vox", type=float, default=4.0, help="voxmap TSDF truncation in voxels (default %(default)s)")
    p.add_argument("--peers", default="octomap", help=f"comma-separated peers: {', '.join(PEERS)} (default %(default)s)")
    p.add_argument("--warmup", type=int, default=3, help="scans through a throw-away instance of each system first (default %(default)s)")
    p.add_argument("--backend", choices=MAP_BACKENDS, default="auto", help="voxmap kernel backend (default %(default)s)")
    p.add_argument("--reserve-bricks", type=int, default=None,
                   help="voxmap's map.reserve_bricks (0: pools grow by copying; default: the config's)")
    p.add_argument("--no-diagnose", action="store_true", help="skip the analysis of cells the two maps disagree on")
    p.add_argument("--repeat", type=int, default=1,
                   help="time the whole run R times (fresh maps each) and keep each scan's fastest time (default %(default)s)")
    p.add_argument("--sequential", action="store_true",
                   help="run each system over all scans in turn (default: interleave them scan by scan)")
    p.add_argument("--same-process", action="store_true",
                   help="run OctoMap in this process too (default: its own process, as a separate node "
                        "would be; sharing one C heap slows voxmap's allocations, see bench/isolated.py)")
    p.add_argument("--summaries", choices=SUMMARY_MODES, default="end",
                   help="when both maps refresh their inner-node summaries: 'end' (both defer and pay once "
                        "after the last scan, timed) or 'every-scan' (inside every timed call) (default %(default)s)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--quiet", action="store_true", help="no per-system progress lines")


def parse_peers(text: str) -> list[str]:
    out = []
    for name in (s.strip() for s in text.split(",") if s.strip()):
        if name not in PEERS:
            raise ValueError(f"unknown peer '{name}'; expected some of {list(PEERS)}")
        if name != "none" and name not in out:
            out.append(name)
    return out


def load_scans(path, n: int | None) -> list:
    from voxmap_ros.datasets.folder import LidarFolder
    ds = LidarFolder(path)
    if n is not None and n < 1:
        raise ValueError(f"--scans must be >= 1, got {n}")
    return [ds[i] for i in range(len(ds) if n is None else min(n, len(ds)))]


def make_config(args):
    from voxmap_ros.config import VoxmapConfig
    cfg = VoxmapConfig()
    cfg.set("map.voxel_size_m", args.voxel_size_m)
    cfg.set("tsdf.trunc_vox", args.trunc_vox)
    cfg.set("lidar.max_range_m", args.max_range_m)
    if args.min_range_m is not None:
        cfg.set("lidar.min_range_m", args.min_range_m)
    cfg.set("map.backend", args.backend)
    if args.reserve_bricks is not None:
        cfg.set("map.reserve_bricks", args.reserve_bricks)
    cfg.validate()
    return cfg


# ------------------------------------------------------------------------------------------ systems
class VoxmapSystem(common.System):
    """voxmap's Mapper (occupancy + TSDF); the timed call is `Mapper.integrate(frame)`."""
    name = "voxmap"

    def __init__(self, cfg, every_scan: bool = False):
        self.cfg, self.every_scan = cfg, every_scan

    def make(self):
        from voxmap_ros.core.mapper import Mapper
        return Mapper(self.cfg)

    def integrate(self, m, frame) -> None:
        m.integrate(frame)
        if self.every_scan:
            m.octree.flush_summaries()

    def finish(self, m, want_mesh: bool = False):
        end_ms = common.flush_deferred_ms(m)
        s = m.summary()
        pts, _ = m.occupied_points(level=0)
        return {"voxels": int(s["voxels"]), "bricks": int(s["bricks"]), "map_bytes": int(s["map_bytes"]),
                "backend": m.backend, "occupied_cells": int(len(pts)), "end_of_run_ms": end_ms}, None


def world_points(frame, min_range_m: float) -> tuple[np.ndarray, np.ndarray]:
    """(points_world (N, 3) float64, origin (3,) float64) of a scan, dropping non-finite returns
    and those closer than min_range_m (voxmap drops the same ones)."""
    p = np.asarray(frame.points, np.float64)
    r = np.linalg.norm(p, axis=1)
    keep = np.isfinite(p).all(1) & (r >= min_range_m) & (r > 0)
    T = np.asarray(frame.T_W_S, np.float64)
    return np.ascontiguousarray(p[keep] @ T[:3, :3].T + T[:3, 3]), np.ascontiguousarray(T[:3, 3])


def make_octree(res_m: float, occ_cfg):
    """An OcTree with voxmap's sensor model (hit/miss probabilities, clamping, threshold)."""
    import octomap
    return set_sensor_model(octomap.OcTree(float(res_m)), occ_cfg)


def set_sensor_model(t, occ_cfg):
    """Give OcTree `t` voxmap's sensor model (an .ot file does not carry it); returns t."""
    t.setProbHit(float(occ_cfg.prob_hit))
    t.setProbMiss(float(occ_cfg.prob_miss))
    t.setClampingThresMin(float(occ_cfg.clamp_min))
    t.setClampingThresMax(float(occ_cfg.clamp_max))
    t.setOccupancyThres(float(occ_cfg.occupied_threshold))
    return t


def read_octree(path, occ_cfg):
    """An OcTree read from an .ot file written by `OcTree.write`, with voxmap's sensor model."""
    import octomap
    t = octomap.OcTree.read(str(path).encode())
    if t is None:
        raise ValueError(f"{path}: not an OctoMap .ot file")
    return set_sensor_model(t, occ_cfg)


class OctomapSystem(common.System):
    """OctoMap OcTree; the timed call is `insertPointCloud(points_world, origin, maxrange)`."""
    name = "octomap"

    def __init__(self, cfg, every_scan: bool = False):
        self.cfg, self.every_scan = cfg, every_scan

    def prepare(self, frames) -> list:
        return [world_points(f, self.cfg.lidar.min_range_m) for f in frames]

    def make(self):
        return make_octree(self.cfg.map.voxel_size_m, self.cfg.occupancy)

    def integrate(self, tree, item) -> None:
        pw, origin = item
        tree.insertPointCloud(pw, origin, maxrange=float(self.cfg.lidar.max_range_m), lazy_eval=not self.every_scan)

    def finish(self, tree, want_mesh: bool = False):
        with common.Timer() as t:
            if not self.every_scan:
                tree.updateInnerOccupancy()
        return {"end_of_run_ms": t.ms if not self.every_scan else 0.0,
                "leaf_nodes": int(tree.getNumLeafNodes()), "nodes": int(tree.size()),
                "map_bytes": int(tree.memoryUsage()), "prob_hit": tree.getProbHit(), "prob_miss": tree.getProbMiss(),
                "clamp_min": tree.getClampingThresMin(), "clamp_max": tree.getClampingThresMax(),
                "occupancy_threshold": tree.getOccupancyThres(), "backend": "octomap-python (1 thread)"}, None

    def save_state(self, tree, path) -> None:
        if not tree.write(str(path).encode()):
            raise OSError(f"OctoMap could not write {path}")

    def load_state(self, path):
        return read_octree(path, self.cfg.occupancy)


def octomap_occupied_cells(tree, res_m: float) -> np.ndarray:
    """Voxel indices (N, 3) int64 of OctoMap's occupied cells at leaf resolution; leaves pruned at
    a coarser depth are expanded to all the voxels they cover. Index = key - 32768."""
    lo_list, n_list = [], []
    for it in tree.begin_leafs():
        if tree.isNodeOccupied(it):
            lo_list.append(it.getCoordinate() - 0.5 * it.getSize())
            n_list.append(int(round(it.getSize() / res_m)))
    if not lo_list:
        return np.zeros((0, 3), np.int64)
    lo = np.round(np.asarray(lo_list) / res_m).astype(np.int64)
    n = np.asarray(n_list)
    out = [lo[n == 1]]
    for size in np.unique(n[n > 1]):
        g = np.stack(np.meshgrid(*[np.arange(size)] * 3, indexing="ij"), -1).reshape(-1, 3)
        out.append((lo[n == size][:, None, :] + g[None]).reshape(-1, 3))
    return np.concatenate(out)


def voxmap_occupied_cells(mapper) -> np.ndarray:
    """Voxel indices (N, 3) int64 of voxmap's occupied voxels (centres at (i + 0.5) * res)."""
    pts, _ = mapper.occupied_points(level=0)
    return np.round(pts.astype(np.float64) / mapper.config.map.voxel_size_m - 0.5).astype(np.int64)


def _pack(idx: np.ndarray) -> np.ndarray:
    """(N, 3) int64 voxel indices (|i| < 2^20) -> (N,) int64 keys, for set operations."""
    b = idx + (1 << 20)
    return (b[:, 0] << 42) | (b[:, 1] << 21) | b[:, 2]


def _unpack(keys: np.ndarray) -> np.ndarray:
    m = (1 << 21) - 1
    return np.stack([(keys >> 42) & m, (keys >> 21) & m, keys & m], 1) - (1 << 20)


def check_alignment(tree, mapper, prepared, res_m: float) -> dict:
    """Verify on a real endpoint (the first of the first scan) that OctoMap's key - 32768 equals
    voxmap's floor(x / res), that both put the cell centre at (i + 0.5) * res, and that both maps
    agree on what that cell holds."""
    import torch
    pw = prepared[0][0]
    p = pw[0]
    key = tree.coordToKey(p)
    k = np.array([key[0], key[1], key[2]], np.int64) - OCTOMAP_KEY_OFFSET
    i = np.floor(p / res_m).astype(np.int64)
    centre_oct = np.asarray(tree.keyToCoord(key), np.float64)
    centre_vox = (i + 0.5) * res_m
    try:
        oct_lo = float(tree.search(centre_vox).getLogOdds())
    except Exception:          # noqa: BLE001 - octomap raises NullPointerException for unknown cells
        oct_lo = None
    vm_lo, known = mapper.octree.occupancy_at(torch.as_tensor(centre_vox[None]), 0)
    # Whole-scan agreement of endpoint cells: OctoMap (float32 points, double key maths) vs floor(x/res).
    keys_oct = np.floor(pw.astype(np.float32).astype(np.float64) * (1.0 / res_m)).astype(np.int64)
    same = (keys_oct == np.floor(pw / res_m).astype(np.int64)).all(1)
    return {"point_m": p.tolist(), "octomap_key": [int(key[0]), int(key[1]), int(key[2])],
            "octomap_index": k.tolist(), "voxmap_index": i.tolist(), "same_cell": bool((k == i).all()),
            "octomap_centre_m": centre_oct.tolist(), "voxmap_centre_m": centre_vox.tolist(),
            "centre_diff_m": float(np.abs(centre_oct - centre_vox).max()),
            "octomap_logodds_at_cell": oct_lo,
            "voxmap_logodds_at_cell": float(vm_lo[0]) if bool(known[0]) else None,
            "first_scan_endpoint_cells_same_float32_vs_float64": float(same.mean())}


def compare_occupied(tree, mapper, res_m: float, diagnose: bool = True) -> dict:
    """IoU of the occupied voxel sets and, when `diagnose`, what each map holds where the other
    says occupied (free / unknown / adjacent to an occupied cell of the other map)."""
    import torch
    a = np.unique(_pack(voxmap_occupied_cells(mapper)))
    b = np.unique(_pack(octomap_occupied_cells(tree, res_m)))
    inter = np.intersect1d(a, b, assume_unique=True)
    union = len(a) + len(b) - len(inter)
    out = {"voxmap_occupied": int(len(a)), "octomap_occupied": int(len(b)), "both": int(len(inter)),
           "voxmap_only": int(len(a) - len(inter)), "octomap_only": int(len(b) - len(inter)),
           "iou": float(len(inter) / union) if union else None}
    if not diagnose:
        return out
    a_only = np.setdiff1d(a, b, assume_unique=True)
    b_only = np.setdiff1d(b, a, assume_unique=True)
    offs = np.stack(np.meshgrid(*[np.arange(-1, 2)] * 3, indexing="ij"), -1).reshape(-1, 3)
    offs = offs[np.abs(offs).sum(1) > 0]

    def near(keys, other):
        """Fraction of cells `keys` with one of their 26 neighbours in the sorted set `other`."""
        if len(keys) == 0:
            return None
        nb = _pack((_unpack(keys)[:, None, :] + offs[None]).reshape(-1, 3)).reshape(len(keys), 26)
        return float(np.isin(nb, other).any(1).mean())

    # What OctoMap holds at voxmap-only occupied cells (queried one by one, sampled if many).
    rng = np.random.default_rng(0)
    sample = a_only if len(a_only) <= DIAG_QUERY_LIMIT else rng.choice(a_only, DIAG_QUERY_LIMIT, replace=False)
    states = {"free": 0, "unknown": 0, "occupied": 0}
    oct_lo = []
    sample_centres = (_unpack(sample).astype(np.float64) + 0.5) * res_m
    for c in sample_centres:
        try:
            lo = tree.search(c).getLogOdds()
        except Exception:      # noqa: BLE001 - unknown cell
            states["unknown"] += 1
            continue
        oct_lo.append(lo)
        states["free" if lo < tree.getOccupancyThresLog() else "occupied"] += 1
    n_s = max(1, len(sample))
    vm_lo = mapper.octree.occupancy_at(torch.as_tensor(sample_centres), 0)[0].numpy() if len(sample) else []

    def quantiles(x):
        x = np.asarray(x, np.float64)
        return {q: float(np.quantile(x, v)) for q, v in (("p10", 0.1), ("p50", 0.5), ("p90", 0.9))} if x.size else None
    # What voxmap holds at OctoMap-only occupied cells.
    if len(b_only):
        centres = torch.as_tensor((_unpack(b_only).astype(np.float64) + 0.5) * res_m)
        lo, known = mapper.octree.occupancy_at(centres, 0)
        lo, known = lo.numpy(), known.numpy()
        vm_free, vm_unknown = float(np.mean(known & (lo <= 0))), float(np.mean(~known))
    else:
        vm_free = vm_unknown = None
    out["diagnosis"] = {
        "voxmap_only_octomap_state": {k: v / n_s for k, v in states.items()},
        "voxmap_only_sampled": int(len(sample)),
        "voxmap_only_octomap_logodds": quantiles(oct_lo),
        "voxmap_only_voxmap_logodds": quantiles(vm_lo),
        "logodds_hit_miss": [float(np.log(tree.getProbHit() / (1 - tree.getProbHit()))),
                             float(np.log(tree.getProbMiss() / (1 - tree.getProbMiss())))],
        "voxmap_only_with_octomap_occupied_neighbour": near(a_only, b),
        "octomap_only_voxmap_state": {"free": vm_free, "unknown": vm_unknown},
        "octomap_only_with_voxmap_occupied_neighbour": near(b_only, a),
    }
    return out


# ------------------------------------------------------------------------------------------ main
def run(args) -> dict:
    peers = parse_peers(args.peers)
    if args.warmup < 0:
        raise ValueError(f"--warmup must be >= 0, got {args.warmup}")
    cfg = make_config(args)
    with common.Timer() as t_load:
        scans = load_scans(args.data, args.scans)
    n_pts = [len(f.points) for f in scans]
    print(f"voxmap bench lidar: {len(scans)} scans ({np.mean(n_pts):.0f} points each) from {args.data} loaded in "
          f"{t_load.ms / 1000:.1f} s; voxel {cfg.map.voxel_size_m} m, range [{cfg.lidar.min_range_m}, "
          f"{cfg.lidar.max_range_m}] m, peers {peers or 'none'}", file=sys.stderr)
    every = args.summaries == "every-scan"
    systems = [VoxmapSystem(cfg, every)]
    if "octomap" in peers:
        octo = OctomapSystem(cfg, every)
        systems.append(octo if args.same_process else isolated.ProcessSystem(octo))
    try:
        load_start = common.load_average()
        states, ms, rep_medians = common.run_systems(systems, scans, args.warmup, interleave=not args.sequential,
                                                     progress=common.progress_printer("scan", args.quiet),
                                                     repeat=args.repeat)
        load_end = common.load_average()
        finished = {s.name: s.finish(states[s.name])[0] for s in systems}
        if "octomap" in peers:
            tree = systems[-1].local(states["octomap"])
    finally:
        for s in systems:
            if isinstance(s, isolated.ProcessSystem):
                s.close()
    results = {}
    for s in systems:
        results[s.name] = common.timing_stats(ms[s.name], "ms_per_scan")
        results[s.name]["ms_per_scan"] = [round(x, 3) for x in ms[s.name]]
        results[s.name]["repeat_medians_ms"] = rep_medians[s.name]["medians"]
        results[s.name]["repeat_p95_ms"] = rep_medians[s.name]["p95s"]
        results[s.name].update(finished[s.name])
        results[s.name]["total_incl_end_of_run_s"] = results[s.name]["total_s"] + finished[s.name]["end_of_run_ms"] / 1000
    mapper = states["voxmap"]
    payload = {
        "command": common.command_line(), "equivalent_command": common.equivalent_command(args, "lidar"),
        "benchmark": "lidar", "machine": common.machine_info(), "code": common.code_fingerprint(),
        "data": str(args.data), "scans": len(scans), "points_per_scan_mean": float(np.mean(n_pts)),
        "warmup_scans": int(min(args.warmup, len(scans))), "repeat": args.repeat,
        "schedule": "sequential" if args.sequential else "interleaved (systems take turns scan by scan)",
        "octomap_process": None if "octomap" not in peers else (
            "same process" if args.same_process else "own process (timed there)"),
        "load_average_start": load_start, "load_average_end": load_end,
        "settings": {"voxel_size_m": cfg.map.voxel_size_m, "max_range_m": cfg.lidar.max_range_m,
                     "min_range_m": cfg.lidar.min_range_m, "trunc_vox": cfg.tsdf.trunc_vox,
                     "prob_hit": cfg.occupancy.prob_hit, "prob_miss": cfg.occupancy.prob_miss,
                     "clamp_min": cfg.occupancy.clamp_min, "clamp_max": cfg.occupancy.clamp_max,
                     "occupied_threshold": cfg.occupancy.occupied_threshold,
                     "voxmap_reserve_bricks": cfg.map.reserve_bricks},
        "summaries": args.summaries,
        "timed": {"voxmap": "Mapper.integrate(frame) (occupancy + TSDF)" + (
                      " + Octree.flush_summaries()" if every else "; end_of_run_ms: Octree.flush_summaries() once"),
                  "octomap": f"OcTree.insertPointCloud(points_world, origin, maxrange, lazy_eval={not every}) "
                             "(world points precomputed; timed in OctoMap's process)" + (
                                 "" if every else "; end_of_run_ms: OcTree.updateInnerOccupancy() once")},
        "results": results,
    }
    if "octomap" in peers:
        first = [world_points(scans[0], cfg.lidar.min_range_m)]
        with common.Timer() as t_cmp:
            cmp = compare_occupied(tree, mapper, cfg.map.voxel_size_m, diagnose=not args.no_diagnose)
        cmp["compare_s"] = t_cmp.ms / 1000
        payload["occupied_iou_vs_octomap"] = cmp["iou"]
        payload["occupied_comparison"] = cmp
        payload["grid_alignment"] = check_alignment(tree, mapper, first, cfg.map.voxel_size_m)
        sp = common.ratio(results["octomap"]["ms_per_scan_median"], results["voxmap"]["ms_per_scan_median"])
        sp_total = common.ratio(results["octomap"]["total_incl_end_of_run_s"],
                                results["voxmap"]["total_incl_end_of_run_s"])
        payload["ratios"] = {"octomap_over_voxmap_ms": sp, "octomap_over_voxmap_total": sp_total,
                             "voxmap_over_octomap_ms": common.ratio(results["voxmap"]["ms_per_scan_median"],
                                                                    results["octomap"]["ms_per_scan_median"])}
        payload["bar"] = {"speedup_ge_20x": sp is not None and sp >= 20.0,
                          "speedup_total_ge_20x": sp_total is not None and sp_total >= 20.0,
                          "iou_ge_0_7": cmp["iou"] is not None and cmp["iou"] >= 0.7}
    return payload


def print_report(payload: dict, file=None) -> None:
    rows = []
    for name, r in payload["results"].items():
        rows.append({"system": name, "median": r.get("ms_per_scan_median"), "p95": r.get("ms_per_scan_p95"),
                     "max": r.get("ms_per_scan_max"), "mean": r.get("ms_per_scan_mean"), "total": r.get("total_s"),
                     "end": r.get("end_of_run_ms"), "total_end": r.get("total_incl_end_of_run_s"),
                     "mb": r["map_bytes"] / 2 ** 20 if r.get("map_bytes") else None,
                     "occ": r.get("occupied_cells"), "backend": r.get("backend")})
    if "occupied_comparison" in payload:
        rows[-1]["occ"] = payload["occupied_comparison"]["octomap_occupied"]
    common.print_table(rows, [("system", "system"), ("median", "ms/scan med"), ("p95", "p95"), ("max", "max"),
                              ("mean", "mean"), ("total", "total s"), ("end", "end-of-run ms"),
                              ("total_end", "total+end s"), ("mb", "map MiB"), ("occ", "occupied"), ("backend", "backend")],
                       title=f"LiDAR fusion, {payload['scans']} scans, voxel {payload['settings']['voxel_size_m']} m, "
                             f"summaries: {payload.get('summaries', 'end')}", file=file)
    if "ratios" in payload:
        print(f"  octomap / voxmap time (speed-up)  {common.fmt(payload['ratios']['octomap_over_voxmap_ms'])}x "
              f"per-scan median, {common.fmt(payload['ratios']['octomap_over_voxmap_total'])}x total with the "
              "end-of-run summary work", file=file)
        c = payload["occupied_comparison"]
        print(f"  occupied IoU vs octomap           {common.fmt(c['iou'], 3)}  (both {c['both']:,}, voxmap only "
              f"{c['voxmap_only']:,}, octomap only {c['octomap_only']:,})", file=file)
        g = payload["grid_alignment"]
        print(f"  grid alignment: same cell {g['same_cell']}, centre diff {g['centre_diff_m']:.2e} m", file=file)


def main(args) -> int:
    return common.run_and_report(run, print_report, args)
