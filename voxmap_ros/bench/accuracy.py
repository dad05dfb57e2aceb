"""`voxmap bench accuracy`: mesh accuracy against ground truth, voxmap vs Open3D VoxelBlockGrid.

A procedural scene with a ground-truth mesh (voxmap_ros.sim) is rendered into an RGB-D folder
dataset once per depth-noise model ("none": exact depth; "kinect": the axial Kinect model
sigma(z) = 0.0012 + 0.0019 (z - 0.4)^2 m of voxmap_ros.sim.sensors), written as uint16
millimetres like a real sensor. For every (voxel size, noise) case the same in-memory frames go
through voxmap's `Mapper` and Open3D's tensor `VoxelBlockGrid` (CPU), both with the same voxel
size, truncation (trunc_vox * voxel), depth cut-off, uint16 depth and depth_scale, intrinsics,
poses and colour; the same mesh weight threshold (voxmap's tsdf.min_weight_mesh) is used for
both meshes. Each mesh is scored against the ground truth with
`voxmap_ros.eval.metrics.mesh_metrics` at tau (the same seeded ground-truth samples for both).
The systems reused here are `rgbd.VoxmapSystem` and `rgbd.Open3dVbgSystem`.

Two supplements help reading the numbers:
- `recall_visible` / `fscore_visible`: recall over the ground-truth samples that some frame
  actually sees (in the image, z-depth within the max range, unoccluded by exact ray casting
  against the ground truth). In the indoor scene only about 45 % of the ground-truth area is ever
  visible (the ceiling, the undersides and the hidden faces of furniture are not), which caps
  the plain recall near 0.46 for every system.
- `--grid-shifts-vox`: the scene (poses and ground truth, identically for all systems) can be
  translated by a fraction of a voxel along x, y and z. Where the sampling grid falls relative to
  planar surfaces and 2 cm thin structures moves F-scores by a few thousandths, so a difference
  that small between two systems is only meaningful when it holds across grid shifts. voxmap
  samples voxel centres at (i + 1/2) * voxel, Open3D at i * voxel, so a shift of 0.5 voxel gives
  each system the other's grid.

One semantic difference is left as each system has it by default: Open3D's VoxelBlockGrid
integration picks a voxel's pixel by truncating the projected coordinate (pixel floor(u)), where
voxmap and the simulator take the nearest pixel (centres at integer coordinates, as K says).
Open3D's surfaces therefore sit about half a pixel off (~3.5 mm at 2 m for the default camera):
its mean accuracy is a few millimetres worse, and on the 2 cm thin board, whose unseen back face
lies exactly tau = 2 cm behind the seen front face, the offset pulls the back face inside tau and
adds recall for a surface no frame saw. `--pixel-lookup floor` gives voxmap Open3D's choice
(config rgbd.pixel_lookup), for a comparison in which that difference is gone too.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from ..config import MAP_BACKENDS
from . import common, rgbd

NOISE_MODELS = {"none": False, "kinect": True}          # name -> generate_dataset(noise=...)
PEERS = ("open3d", "open3d_vbg", "none")
VBG_BLOCK_RESOLUTION = 8                                # voxmap bricks are 8^3 too
VBG_BLOCK_COUNT = 40000                                 # initial capacity (the hash map grows)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scene", choices=("indoor", "outdoor"), default="indoor",
                   help="simulated scene (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="scene / trajectory / noise seed (default %(default)s)")
    p.add_argument("--frames", type=int, default=60, help="RGB-D frames rendered and fused (default %(default)s)")
    p.add_argument("--width", type=int, default=320, help="image width, pixels (default %(default)s)")
    p.add_argument("--height", type=int, default=240, help="image height, pixels (default %(default)s)")
    p.add_argument("--voxel-sizes-m", default="0.01,0.02",
                   help="comma-separated voxel edges, metres (default %(default)s)")
    p.add_argument("--noise", default="none,kinect",
                   help=f"comma-separated depth-noise models: {', '.join(NOISE_MODELS)} (default %(default)s)")
    p.add_argument("--grid-shifts-vox", default="0",
                   help="comma-separated sub-voxel shifts of the whole scene (poses and ground truth, all "
                        "systems alike) along x, y, z, in voxels, each run as its own case (default %(default)s)")
    p.add_argument("--tau-m", type=float, default=0.02, help="F-score distance threshold, metres (default %(default)s)")
    p.add_argument("--trunc-vox", type=float, default=4.0,
                   help="TSDF truncation in voxels (all systems) (default %(default)s)")
    p.add_argument("--max-range-m", type=float, default=5.0,
                   help="ignore depth beyond this, metres (all systems) (default %(default)s)")
    p.add_argument("--peers", default="open3d", help=f"comma-separated peers: {', '.join(PEERS)} "
                   "('open3d' = the VoxelBlockGrid) (default %(default)s)")
    p.add_argument("--backend", choices=MAP_BACKENDS, default="auto",
                   help="voxmap kernel backend (default %(default)s)")
    rgbd.add_voxmap_fusion_arguments(p)
    p.add_argument("--mesh-samples", type=int, default=200_000,
                   help="points sampled per mesh for the metrics (default %(default)s)")
    p.add_argument("--workdir", help="keep the generated datasets here and reuse them on later runs "
                   "(default: a temporary folder, removed at the end)")
    p.add_argument("--save-meshes", action="store_true", help="also write every mesh as PLY under --workdir")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--quiet", action="store_true", help="no progress lines")


# ------------------------------------------------------------------------------------------ options
def parse_floats(text: str, what: str) -> list[float]:
    vals = []
    for s in (s.strip() for s in str(text).split(",") if s.strip()):
        try:
            v = float(s)
        except ValueError:
            raise ValueError(f"{what}: '{s}' is not a number") from None
        if not v > 0:
            raise ValueError(f"{what}: values must be > 0, got {v}")
        if v not in vals:
            vals.append(v)
    if not vals:
        raise ValueError(f"{what}: give at least one value")
    return vals


def parse_shifts(text: str) -> list[float]:
    vals = []
    for t in (t.strip() for t in str(text).split(",") if t.strip()):
        try:
            v = float(t)
        except ValueError:
            raise ValueError(f"--grid-shifts-vox: '{t}' is not a number") from None
        if not (0 <= v < 1):
            raise ValueError(f"--grid-shifts-vox: shifts are fractions of a voxel in [0, 1), got {v}")
        if v not in vals:
            vals.append(v)
    if not vals:
        raise ValueError("--grid-shifts-vox: give at least one value (0 = no shift)")
    return vals


def parse_noise(text: str) -> list[str]:
    out = []
    for s in (s.strip() for s in str(text).split(",") if s.strip()):
        if s not in NOISE_MODELS:
            raise ValueError(f"unknown noise model '{s}'; expected some of {list(NOISE_MODELS)}")
        if s not in out:
            out.append(s)
    if not out:
        raise ValueError("--noise: give at least one model")
    return out


def parse_peers(text: str) -> list[str]:
    out = []
    for s in (s.strip() for s in str(text).split(",") if s.strip()):
        if s not in PEERS:
            raise ValueError(f"unknown peer '{s}'; expected some of {list(PEERS)}")
        if s in ("open3d", "open3d_vbg") and "open3d_vbg" not in out:
            out.append("open3d_vbg")
    return out


# ------------------------------------------------------------------------------------------ data
def dataset_dir(workdir: Path, args, noise: str) -> Path:
    return Path(workdir) / f"{args.scene}_seed{args.seed}_f{args.frames}_{args.width}x{args.height}_noise-{noise}"


def ensure_dataset(folder: Path, args, noise: str, log) -> tuple[Path, bool]:
    """Generate the RGB-D dataset of one noise model into `folder`, or reuse it when its
    scene.json says it was made with the same scene, seed, frame count, image size and noise.
    Returns (folder, reused)."""
    from voxmap_ros.sim.dataset_writer import generate_dataset
    meta_p = folder / "scene.json"
    want = {"kind": args.scene, "seed": int(args.seed), "n_frames": int(args.frames),
            "image_size": [int(args.width), int(args.height)], "noise": NOISE_MODELS[noise]}
    if meta_p.is_file() and (folder / "gt_mesh.ply").is_file() and (folder / "rgbd" / "poses.txt").is_file():
        try:
            meta = json.loads(meta_p.read_text())
        except (OSError, ValueError):
            meta = {}
        if all(meta.get(k) == v for k, v in want.items()):
            return folder, True
    if folder.exists():
        shutil.rmtree(folder)
    with common.Timer() as t:
        generate_dataset(args.scene, args.seed, folder, n_frames=args.frames, n_scans=0,
                         noise=NOISE_MODELS[noise], width=args.width, height=args.height)
    log(f"  generated {args.frames} frames ({noise} noise) in {t.ms / 1000:.1f} s -> {folder}")
    return folder, False


def shifted(frames, gt, shift_m: float):
    """(frames, gt) with the world translated by shift_m along x, y and z (poses and ground truth
    alike; images, intrinsics and depth unchanged)."""
    if shift_m == 0:
        return frames, gt
    import numpy as np
    from voxmap_ros.types import MeshData
    t = np.full(3, shift_m)
    out = []
    for f in frames:
        T = np.array(f.T_W_S, np.float64)
        T[:3, 3] += t
        out.append(dataclasses.replace(f, T_W_S=T))
    return out, MeshData((np.asarray(gt.vertices, np.float64) + t).astype(np.float32), gt.triangles, gt.colors)


def gt_samples(gt, n_samples: int):
    """The ground-truth samples `mesh_metrics` draws (same seed, same order): (n, 3) float64."""
    import numpy as np
    from voxmap_ros.eval.metrics import sample_surface
    return sample_surface(gt, n_samples, np.random.default_rng(0))


def gt_visibility(gt, pts, frames, max_range_m: float, eps_m: float = 2e-3):
    """(N,) bool: is ground-truth sample pts[i] seen by some frame? Seen: projects inside the
    image (nearest pixel), z-depth in (0, max_range_m], and the ray from the camera centre first
    hits the ground truth no nearer than eps_m before the sample (exact ray casting)."""
    import numpy as np
    import open3d as o3d
    rc = o3d.t.geometry.RaycastingScene()
    rc.add_triangles(o3d.core.Tensor(np.asarray(gt.vertices, np.float32)),
                     o3d.core.Tensor(np.asarray(gt.triangles, np.uint32)))
    pts = np.asarray(pts, np.float64)
    vis = np.zeros(len(pts), bool)
    for f in frames:
        H, W = f.depth.shape
        K, T = np.asarray(f.K, np.float64), np.asarray(f.T_W_S, np.float64)
        pc = (pts - T[:3, 3]) @ T[:3, :3]
        z = pc[:, 2]
        zc = np.where(z > 1e-6, z, 1.0)
        u = np.floor(K[0, 0] * pc[:, 0] / zc + K[0, 2] + 0.5)
        v = np.floor(K[1, 1] * pc[:, 1] / zc + K[1, 2] + 0.5)
        cand = np.flatnonzero(~vis & (z > 1e-6) & (z <= max_range_m) & (u >= 0) & (u < W) & (v >= 0) & (v < H))
        if cand.size == 0:
            continue
        d = pts[cand] - T[:3, 3]
        dist = np.linalg.norm(d, axis=1)
        rays = np.concatenate([np.broadcast_to(T[:3, 3], d.shape), d / dist[:, None]], 1).astype(np.float32)
        t_hit = rc.cast_rays(o3d.core.Tensor(rays))["t_hit"].numpy()
        vis[cand[t_hit >= dist - eps_m]] = True
    return vis


# ------------------------------------------------------------------------------------------ systems
def system_args(args, voxel_size_m: float, depth_scale: float) -> argparse.Namespace:
    """The option set rgbd.VoxmapSystem / rgbd.Open3dVbgSystem read, for one case."""
    return rgbd.system_options(voxel_size_m=float(voxel_size_m), trunc_vox=float(args.trunc_vox),
                               max_range_m=float(args.max_range_m), depth_scale=float(depth_scale),
                               backend=args.backend, pixel_lookup=args.pixel_lookup,
                               mesh_max_jump_vox=args.mesh_max_jump_vox,
                               block_resolution=VBG_BLOCK_RESOLUTION, block_count=VBG_BLOCK_COUNT)


def fuse_and_mesh(system, frames, progress=None):
    """Fuse `frames` into a fresh map of `system` (untimed warm-up: none), extract its mesh.
    Returns (result dict, mesh)."""
    states, ms, _ = common.run_systems([system], frames, warmup=0, interleave=False, progress=progress)
    stats = common.timing_stats(ms[system.name])
    res = {k: stats[k] for k in ("ms_per_frame_median", "ms_per_frame_p95", "total_s")}
    res["integrate_total_s"] = res.pop("total_s")
    extra, mesh = system.finish(states.pop(system.name), True)
    res.update({k: v for k, v in extra.items() if k in ("voxels", "bricks", "blocks", "map_bytes", "backend",
                                                       "mesh_ms", "mesh_vertices", "mesh_triangles")})
    return res, mesh


def score(mesh, gt, tau_m: float, n_samples: int, gt_pts=None, visible=None) -> dict:
    """mesh_metrics of `mesh` against `gt`, plus recall_visible / fscore_visible over the
    ground-truth samples `gt_pts` (those mesh_metrics draws) where `visible` is True."""
    import numpy as np
    from voxmap_ros.eval.metrics import mesh_metrics, point_to_mesh_distance
    with common.Timer() as t:
        m = mesh_metrics(mesh, gt, tau_m=tau_m, n_samples=n_samples)
        if gt_pts is not None and visible is not None and visible.any():
            d = point_to_mesh_distance(gt_pts[visible], mesh)
            rv = float(np.mean(d < tau_m))
            p = m["precision"]
            m["recall_visible"] = rv
            m["fscore_visible"] = 0.0 if p + rv == 0 else 2 * p * rv / (p + rv)
    m["metrics_ms"] = t.ms
    return m


def _save_mesh(mesh, path: Path) -> None:
    import numpy as np
    import open3d as o3d
    lm = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(np.asarray(mesh.vertices, np.float64)),
                                   o3d.utility.Vector3iVector(np.asarray(mesh.triangles, np.int32)))
    if len(mesh.colors) == len(mesh.vertices):
        lm.vertex_colors = o3d.utility.Vector3dVector(np.asarray(mesh.colors, np.float64) / 255.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    o3d.io.write_triangle_mesh(str(path), lm, write_ascii=False)


# ------------------------------------------------------------------------------------------ main
def run(args) -> dict:
    """Run the benchmark described by parsed `args`; returns the JSON payload."""
    from voxmap_ros.config import VoxmapConfig
    from voxmap_ros.eval.metrics import load_mesh

    from .rgbd import Open3dVbgSystem, VoxmapSystem, load_frames

    t_start = time.perf_counter()
    voxels = parse_floats(args.voxel_sizes_m, "--voxel-sizes-m")
    noises = parse_noise(args.noise)
    shifts = parse_shifts(args.grid_shifts_vox)
    peers = parse_peers(args.peers)
    if args.frames < 1:
        raise ValueError(f"--frames must be >= 1, got {args.frames}")
    if not args.tau_m > 0:
        raise ValueError(f"--tau-m must be > 0, got {args.tau_m}")
    if args.save_meshes and not args.workdir:
        raise ValueError("--save-meshes needs --workdir")
    quiet = bool(args.quiet)

    def log(msg: str) -> None:
        if not quiet:
            print(msg, file=sys.stderr, flush=True)

    min_w = VoxmapConfig().tsdf.min_weight_mesh
    tmp = None
    if args.workdir:
        workdir = Path(args.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="voxmap_bench_accuracy_")
        workdir = Path(tmp.name)
    log(f"voxmap bench accuracy: {args.scene} scene seed {args.seed}, {args.frames} frames "
        f"{args.width}x{args.height}, voxels {voxels} m, noise {noises}, trunc {args.trunc_vox} vox, "
        f"max range {args.max_range_m} m, tau {args.tau_m} m, peers {peers or 'none'}")
    cases, datasets = [], {}
    try:
        for noise in noises:
            folder, reused = ensure_dataset(dataset_dir(workdir, args, noise), args, noise, log)
            meta = json.loads((folder / "scene.json").read_text())
            depth_scale = float(meta.get("depth_scale", 1000.0))
            frames = load_frames(folder / "rgbd", None, 1, depth_scale)
            gt = load_mesh(folder / "gt_mesh.ply")
            datasets[noise] = {"folder": str(folder) if args.workdir else None, "reused": reused,
                               "frames": len(frames), "depth": "uint16", "depth_scale": depth_scale,
                               "gt_triangles": int(len(gt.triangles)), "bounds_m": meta.get("bounds_m")}
            vis_cache = {}
            for vs in voxels:
                sa = system_args(args, vs, depth_scale)
                for shift in shifts:
                    shift_m = shift * vs
                    fr, g = shifted(frames, gt, shift_m)
                    key = round(shift_m, 9)
                    if key not in vis_cache:
                        with common.Timer() as t_vis:
                            pts = gt_samples(g, args.mesh_samples)
                            vis_cache[key] = (pts, gt_visibility(g, pts, fr, args.max_range_m))
                        log(f"  ground-truth visibility (shift {shift_m * 1000:g} mm): "
                            f"{vis_cache[key][1].mean():.3f} of the samples seen ({t_vis.ms / 1000:.1f} s)")
                    pts, visible = vis_cache[key]
                    systems = [VoxmapSystem(sa)]
                    if "open3d_vbg" in peers:
                        systems.append(Open3dVbgSystem(sa, weight_threshold=min_w))
                    case = {"voxel_size_m": vs, "noise": noise, "frames": len(fr), "grid_shift_vox": shift,
                            "trunc_m": float(args.trunc_vox) * vs, "tau_m": float(args.tau_m),
                            "gt_visible_fraction": float(visible.mean())}
                    for s in systems:
                        log(f"  voxel {vs} m, noise {noise}, grid shift {shift:g} vox: {s.name} ...")
                        res, mesh = fuse_and_mesh(s, fr, common.progress_printer("frame", quiet))
                        res.update(score(mesh, g, args.tau_m, args.mesh_samples, pts, visible))
                        case[s.name] = res
                        log(f"    {s.name}: F {res['fscore']:.4f} (P {res['precision']:.4f}, R {res['recall']:.4f}; "
                            f"visible-GT R {res.get('recall_visible', float('nan')):.4f}), "
                            f"{res.get('mesh_triangles')} triangles, {res['integrate_total_s']:.1f} s fusion")
                        if args.save_meshes:
                            _save_mesh(mesh, workdir / "meshes" / f"{s.name}_vox{vs:g}_{noise}_shift{shift:g}.ply")
                        del mesh
                    if "open3d_vbg" in case:
                        case["voxmap_fscore_minus_open3d"] = case["voxmap"]["fscore"] - case["open3d_vbg"]["fscore"]
                        if "fscore_visible" in case["voxmap"] and "fscore_visible" in case["open3d_vbg"]:
                            case["voxmap_fscore_visible_minus_open3d"] = (case["voxmap"]["fscore_visible"]
                                                                          - case["open3d_vbg"]["fscore_visible"])
                    cases.append(case)
                    del fr, g
            del frames, gt
    finally:
        if tmp is not None:
            tmp.cleanup()
    diffs = [c["voxmap_fscore_minus_open3d"] for c in cases if "voxmap_fscore_minus_open3d" in c]
    diffs_vis = [c["voxmap_fscore_visible_minus_open3d"] for c in cases if "voxmap_fscore_visible_minus_open3d" in c]
    return {
        "command": common.command_line(), "equivalent_command": common.equivalent_command(args, "accuracy"),
        "benchmark": "accuracy", "machine": common.machine_info(), "code": common.code_fingerprint(),
        "scene": args.scene, "seed": args.seed, "frames": args.frames, "image_size": [args.width, args.height],
        "settings": {"voxel_sizes_m": voxels, "noise": noises, "grid_shifts_vox": shifts, "tau_m": args.tau_m,
                     "trunc_vox": args.trunc_vox,
                     "max_range_m": args.max_range_m, "mesh_weight_threshold": min_w,
                     "mesh_samples": args.mesh_samples, "voxmap_backend_requested": args.backend,
                     "open3d_block_resolution": VBG_BLOCK_RESOLUTION, "open3d_device": "CPU:0",
                     "voxmap_pixel_lookup": args.pixel_lookup, "open3d_pixel_lookup": "floor",
                     "voxmap_mesh_max_jump_vox": args.mesh_max_jump_vox},
        "noise_models": {"none": "exact ray-cast depth (uint16 mm quantisation only)",
                         "kinect": "additive Gaussian along z, sigma(z) = 0.0012 + 0.0019 (z - 0.4)^2 m "
                                   "(Nguyen et al. 2012), then uint16 mm"},
        "datasets": datasets,
        "cases": cases,
        "all_voxmap_ge_open3d": (all(d >= 0 for d in diffs) if diffs else None),
        "all_voxmap_ge_open3d_visible": (all(d >= 0 for d in diffs_vis) if diffs_vis else None),
        "grid_shift_means": shift_means(cases) if len(shifts) > 1 else None,
        "total_s": time.perf_counter() - t_start,
    }


def shift_means(cases: list) -> list:
    """Per (voxel size, noise): each system's F-score averaged over the grid shifts, and the
    difference voxmap - Open3D of those means."""
    import numpy as np
    groups: dict = {}
    for c in cases:
        groups.setdefault((c["voxel_size_m"], c["noise"]), []).append(c)
    out = []
    for (vs, noise), cs in groups.items():
        row = {"voxel_size_m": vs, "noise": noise, "grid_shifts_vox": [c["grid_shift_vox"] for c in cs]}
        for name in ("voxmap", "open3d_vbg"):
            f = [c[name]["fscore"] for c in cs if name in c]
            if f:
                row[name] = {"fscore_mean": float(np.mean(f)), "fscore_min": float(np.min(f)),
                             "fscore_max": float(np.max(f))}
        if "voxmap" in row and "open3d_vbg" in row:
            row["voxmap_fscore_mean_minus_open3d"] = row["voxmap"]["fscore_mean"] - row["open3d_vbg"]["fscore_mean"]
        out.append(row)
    return out


def print_report(payload: dict, file=None) -> None:
    rows = []
    for c in payload["cases"]:
        for name in ("voxmap", "open3d_vbg"):
            r = c.get(name)
            if r is None:
                continue
            rows.append({"voxel": c["voxel_size_m"], "noise": c["noise"], "shift": c.get("grid_shift_vox"),
                         "system": name, "f": r["fscore"], "fv": r.get("fscore_visible"),
                         "p": r["precision"], "r": r["recall"], "acc": r["accuracy_m"] * 1000,
                         "comp": r["completeness_m"] * 1000, "ch": r["chamfer_m"] * 1000,
                         "tris": r.get("mesh_triangles"), "ms": r.get("ms_per_frame_median"),
                         "d": c.get("voxmap_fscore_minus_open3d") if name == "voxmap" else None})
    for r in rows:
        r["voxel"] = f"{r['voxel']:g} m"
        r["shift"] = f"{r['shift']:g}"
        for k in ("f", "fv", "p", "r", "d"):
            r[k] = None if r[k] is None else f"{r[k]:+.4f}" if k == "d" else f"{r[k]:.4f}"
    s = payload["settings"]
    cols = [("voxel", "voxel"), ("noise", "noise")]
    if len(s["grid_shifts_vox"]) > 1 or s["grid_shifts_vox"] != [0.0]:
        cols.append(("shift", "shift vox"))
    common.print_table(rows, cols + [("system", "system"), ("f", "F-score"), ("p", "precision"), ("r", "recall"),
                              ("fv", "F vis-GT"), ("acc", "acc mm"), ("comp", "compl mm"),
                              ("ch", "chamfer mm"), ("tris", "triangles"), ("ms", "ms/frame med"),
                              ("d", "F voxmap-o3d")],
                       title=f"Mesh accuracy vs ground truth: {payload['scene']} scene seed {payload['seed']}, "
                             f"{payload['frames']} frames {payload['image_size'][0]}x{payload['image_size'][1]}, "
                             f"F@{s['tau_m'] * 100:g}cm, trunc {s['trunc_vox']:g} vox, max range {s['max_range_m']:g} m",
                       file=file)
    for m in payload.get("grid_shift_means") or []:
        if "voxmap_fscore_mean_minus_open3d" in m:
            print(f"  mean over grid shifts {m['grid_shifts_vox']}: voxel {m['voxel_size_m']:g} m, {m['noise']}: "
                  f"voxmap F {m['voxmap']['fscore_mean']:.4f}, Open3D F {m['open3d_vbg']['fscore_mean']:.4f}, "
                  f"difference {m['voxmap_fscore_mean_minus_open3d']:+.4f}", file=file)
    vis = [c["gt_visible_fraction"] for c in payload["cases"]]
    if vis:
        print(f"  ground truth seen by some frame: {min(vis):.3f} of its area (recall cannot exceed much more; "
              f"'F vis-GT' scores recall over the seen part only)", file=file)
    yn = {None: "-", True: "yes", False: "NO"}
    print(f"  voxmap F-score >= Open3D VBG in every case: {yn[payload['all_voxmap_ge_open3d']]}"
          f" (visible-GT F-score: {yn[payload.get('all_voxmap_ge_open3d_visible')]})", file=file)
    print(f"  total time {payload['total_s']:.1f} s", file=file)


def main(args) -> int:
    return common.run_and_report(run, print_report, args)
