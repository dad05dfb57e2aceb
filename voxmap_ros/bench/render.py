"""`voxmap bench render`: rendering a fused map, voxmap's sparse-voxel rasterizer vs Open3D's
VoxelBlockGrid.ray_cast (CPU), on the same frames and poses.

1. The same frames are fused into voxmap (`Mapper`) and into Open3D's tensor VoxelBlockGrid with the
   same voxel size, truncation, depth cut-off and weights (the systems of `voxmap bench rgbd`).
   Fusion is not timed here (`voxmap bench rgbd` measures it).
2. voxmap's map is turned once into renderable cells (`TsdfField`, timed and reported as
   `field_build_ms`, not part of the per-view figure), Open3D's active block coordinates are read
   once (not timed either).
3. Views: with `--data`, `--views` poses spread evenly over the fused frames, depth compared with
   those frames' input depth; with `--sim SCENE`, poses of the same simulated trajectory that were
   NOT fused (held out), depth compared with the exact ground-truth depth.
4. Per view, timed (wall clock, the systems take turns view by view, each view `--repeat` times,
   the fastest kept): voxmap = `TsdfField.voxels(camera, lod_px)` (frustum culling and level of
   detail) + `render(...)` (binning, ordering, compositing, output images: depth, colour, alpha,
   normals, voxel ids); Open3D = `VoxelBlockGrid.ray_cast(..., ["depth", "color"])` over all
   active blocks (its range-map estimation included).
5. Accuracy per system: median |rendered z-depth - reference depth| over the pixels where both
   are valid (voxmap: opacity > 0.5; Open3D: depth > 0), and the fraction of valid reference
   pixels each system draws (`coverage`); colour error in uint8 levels likewise.
"""
from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np

from ..config import MAP_BACKENDS
from . import accuracy, common, rgbd

VBG_WEIGHT_THRESHOLD = 0.5       # Open3D: voxels observed at least once (weights grow by 1 per frame)
DEPTH_MIN_M = 0.1                # near plane of both systems
BAR_DEPTH_SLACK_M = 0.002        # voxmap's depth error may exceed Open3D's by this much


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="RGB-D dataset folder (depth/, color/, intrinsics.txt, poses.txt)")
    src.add_argument("--sim", choices=("indoor", "outdoor"),
                     help="simulated scene: fuse part of a trajectory, render the held-out poses")
    p.add_argument("--frames", type=int, default=100, help="frames fused (default %(default)s)")
    p.add_argument("--stride", type=int, default=1, help="use every Nth frame of --data (default %(default)s)")
    p.add_argument("--views", type=int, default=20, help="views rendered (default %(default)s)")
    p.add_argument("--width", type=int, default=640, help="rendered image width, pixels (default %(default)s)")
    p.add_argument("--height", type=int, default=480, help="rendered image height, pixels (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="--sim scene / trajectory / noise seed (default %(default)s)")
    p.add_argument("--noise", choices=("kinect", "none"), default="kinect",
                   help="--sim depth noise of the fused frames (default %(default)s)")
    p.add_argument("--voxel-size-m", type=float, default=0.02, help="voxel edge, metres (default %(default)s)")
    p.add_argument("--trunc-vox", type=float, default=4.0, help="TSDF truncation in voxels (default %(default)s)")
    p.add_argument("--max-range-m", type=float, default=5.0,
                   help="fusion depth cut-off and far plane, metres (default %(default)s)")
    p.add_argument("--depth-scale", type=float, default=1000.0, help="uint16 depth units per metre (default %(default)s)")
    p.add_argument("--peers", default="open3d", help=f"comma-separated: {', '.join(PEERS)} (default %(default)s)")
    p.add_argument("--render-backend", choices=("auto", "cpu", "reference"), default="auto",
                   help="voxmap rasterizer backend (default %(default)s)")
    p.add_argument("--backend", choices=MAP_BACKENDS, default="auto",
                   help="voxmap fusion backend (default %(default)s)")
    p.add_argument("--samples", type=int, default=2, help="sub-segments per cell (default %(default)s)")
    p.add_argument("--sharpness-vox", type=float, default=16.0,
                   help="SDF -> density sharpness, per voxel (default %(default)s)")
    p.add_argument("--lod-px", type=float, default=1.0,
                   help="cells smaller than this many pixels are drawn from their parent level (default %(default)s)")
    p.add_argument("--repeat", type=int, default=3, help="times each view is drawn; the fastest counts (default %(default)s)")
    p.add_argument("--warmup", type=int, default=2, help="views drawn once untimed first (default %(default)s)")
    p.add_argument("--block-count", type=int, default=40000, help="Open3D VoxelBlockGrid initial capacity (default %(default)s)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--quiet", action="store_true", help="no progress lines")


PEERS = accuracy.PEERS
parse_peers = accuracy.parse_peers                 # the same Open3D peer choice


def _check_args(args) -> None:
    for name in ("frames", "views", "width", "height", "repeat", "samples", "stride"):
        if int(getattr(args, name)) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        raise ValueError(f"--warmup must be >= 0, got {args.warmup}")
    for name in ("voxel_size_m", "trunc_vox", "max_range_m", "sharpness_vox"):
        v = float(getattr(args, name))
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"--{name.replace('_', '-')} must be a finite number > 0, got {v}")


# ------------------------------------------------------------------------------------------ data
def _scaled_K(K: np.ndarray, w_in: int, h_in: int, w: int, h: int) -> np.ndarray:
    """Intrinsics for an image resized from (w_in, h_in) to (w, h) (pixel centres at integers)."""
    sx, sy = w / w_in, h / h_in
    K2 = np.array(K, np.float64).copy()
    K2[0, 0] *= sx
    K2[0, 1] *= sx
    K2[1, 1] *= sy
    K2[0, 2] = (K[0, 2] + 0.5) * sx - 0.5
    K2[1, 2] = (K[1, 2] + 0.5) * sy - 0.5
    return K2


def _resize_nearest(img: np.ndarray, w: int, h: int) -> np.ndarray:
    H, W = img.shape[:2]
    if (W, H) == (w, h):
        return img
    ys = np.minimum(((np.arange(h) + 0.5) * H / h).astype(np.int64), H - 1)
    xs = np.minimum(((np.arange(w) + 0.5) * W / w).astype(np.int64), W - 1)
    return img[ys][:, xs]


def load_views(args):
    """(fused frames, views): views are dicts with K (for the rendered size), T_W_C, depth_m
    (reference z-depth, 0 = none) and rgb (uint8 or None) at the rendered size."""
    from voxmap_ros.types import Frame
    if args.data:
        from .rgbd import load_frames
        frames = load_frames(args.data, args.frames, args.stride, args.depth_scale)
        idx = np.unique(np.linspace(0, len(frames) - 1, min(args.views, len(frames))).round().astype(int))
        views = []
        for i in idx:
            f = frames[int(i)]
            H, W = f.depth.shape
            scale = float(f.depth_scale) if f.depth_scale is not None else args.depth_scale
            d = f.depth.astype(np.float32) / scale if f.depth.dtype == np.uint16 else f.depth.astype(np.float32)
            d[(f.depth == 65535) | ~np.isfinite(d) | (d > args.max_range_m)] = 0
            views.append({"K": _scaled_K(f.K, W, H, args.width, args.height), "T_W_C": np.asarray(f.T_W_S),
                          "depth_m": _resize_nearest(d, args.width, args.height),
                          "rgb": None if f.rgb is None else _resize_nearest(f.rgb, args.width, args.height),
                          "source": f"frame {int(i)} (fused)"})
        return frames, views
    from voxmap_ros.sim import camera_trajectory, make_scene, render_rgbd
    from voxmap_ros.sim.dataset_writer import default_intrinsics
    scene = make_scene(args.sim, args.seed)
    n = args.frames + args.views
    poses = camera_trajectory(scene, n, args.seed)
    held = set(np.unique(np.linspace(1, n - 2, args.views).round().astype(int)).tolist())
    rng = np.random.default_rng(args.seed)
    W, H = args.width, args.height
    K = default_intrinsics(W, H)
    frames, views = [], []
    for i, T in enumerate(poses):
        if i in held:
            d, rgb, _ = render_rgbd(scene, K, T, W, H, max_depth_m=args.max_range_m)
            views.append({"K": K, "T_W_C": T, "depth_m": d, "rgb": rgb, "source": f"pose {i} (held out)"})
        else:
            d, rgb, _ = render_rgbd(scene, K, T, W, H, depth_noise=args.noise == "kinect", rng=rng)
            mm = np.clip(np.round(d * args.depth_scale), 0, 65534).astype(np.uint16)
            frames.append(Frame(T_W_S=T, depth=mm, rgb=rgb, K=K, depth_scale=args.depth_scale))
    return frames, views


# ------------------------------------------------------------------------------------------ systems
class VoxmapRenderer:
    name = "voxmap"

    def __init__(self, mapper, args):
        from voxmap_ros.render import TsdfField
        self.args = args
        with common.Timer() as t:
            self.field = TsdfField.from_mapper(mapper, sharpness_vox=args.sharpness_vox)
        self.build_ms = t.ms
        self.backend = None
        self.stats: list[dict] = []

    def draw(self, view):
        from voxmap_ros.render import make_camera, render
        a = self.args
        cam = make_camera(view["K"], view["T_W_C"], a.width, a.height, DEPTH_MIN_M, a.max_range_m)
        vs = self.field.voxels(cam, a.lod_px)
        out = render(vs, cam, "sdf", sharpness=self.field.sharpness, samples=a.samples, backend=a.render_backend)
        self.backend = out.backend
        self._cells = len(vs)
        return out

    def note_stats(self) -> None:
        st = {"cells": self._cells}
        if self.backend == "cpu":
            from voxmap_ros.render import cpu_fast
            st.update(cpu_fast.last_stats())
        self.stats.append(st)

    @staticmethod
    def images(out):
        a = out.alpha.detach().double().numpy()
        d = np.where(a > 0.5, out.depth.detach().double().numpy(), 0.0)
        rgb = out.color.detach().double().numpy() / np.maximum(a, 1e-9)[..., None] * 255.0
        return d, rgb, a > 0.5


class Open3dRenderer:
    name = "open3d_vbg"

    def __init__(self, vbg, args):
        import open3d as o3d
        self.o3d, self.o3c = o3d, o3d.core
        self.vbg = vbg
        self.args = args
        self.blocks = vbg.hashmap().key_tensor()

    def draw(self, view):
        o3c, a = self.o3c, self.args
        K = o3c.Tensor(np.asarray(view["K"], np.float64))
        E = o3c.Tensor(np.linalg.inv(np.asarray(view["T_W_C"], np.float64)))
        return self.vbg.ray_cast(block_coords=self.blocks, intrinsic=K, extrinsic=E, width=a.width, height=a.height,
                                 render_attributes=["depth", "color"], depth_scale=1.0, depth_min=DEPTH_MIN_M,
                                 depth_max=a.max_range_m, weight_threshold=VBG_WEIGHT_THRESHOLD,
                                 trunc_voxel_multiplier=a.trunc_vox, range_map_down_factor=8)

    def note_stats(self) -> None:
        pass

    @staticmethod
    def images(out):
        d = out["depth"].numpy()[..., 0].astype(np.float64)
        rgb = out["color"].numpy().astype(np.float64)
        if rgb.size and rgb.max() <= 1.0 + 1e-6:
            rgb = rgb * 255.0
        return d, rgb, d > 0


def fuse(frames, args, peers):
    """(voxmap Mapper, Open3D VoxelBlockGrid or None, seconds each) after fusing all frames."""
    from .rgbd import Open3dVbgSystem, VoxmapSystem
    ns = rgbd.system_options(voxel_size_m=args.voxel_size_m, trunc_vox=args.trunc_vox, max_range_m=args.max_range_m,
                             depth_scale=args.depth_scale, backend=args.backend, block_resolution=8,
                             block_count=args.block_count)
    vm = VoxmapSystem(ns)
    m = vm.make()
    with common.Timer() as t:
        for f in frames:
            vm.integrate(m, f)
        m.octree.flush_summaries()
    secs = {"voxmap": t.ms / 1000}
    vbg = None
    if "open3d_vbg" in peers:
        o3 = Open3dVbgSystem(ns, weight_threshold=VBG_WEIGHT_THRESHOLD)
        items = o3.prepare(frames)
        vbg = o3.make()
        with common.Timer() as t:
            for it in items:
                o3.integrate(vbg, it)
        secs["open3d_vbg"] = t.ms / 1000
    return m, vbg, secs


def _errors(d, rgb, drawn, view) -> dict:
    gt = np.asarray(view["depth_m"], np.float64)
    valid = gt > 0
    both = valid & drawn & (d > 0)
    e = np.abs(d[both] - gt[both])
    err_img = np.full(gt.shape, np.nan)
    err_img[both] = e
    out = {"abs_err": e, "coverage": float(both.sum()) / max(1, int(valid.sum())), "err_img": err_img}
    if view.get("rgb") is not None:
        out["color_err"] = np.abs(rgb[both] - view["rgb"][both].astype(np.float64)).mean(-1)
    return out


# ------------------------------------------------------------------------------------------ main
def run(args) -> dict:
    _check_args(args)
    peers = parse_peers(args.peers)
    import torch
    with common.Timer() as t_load:
        frames, views = load_views(args)
    src = args.data or f"sim:{args.sim} (seed {args.seed})"
    if not args.quiet:
        print(f"voxmap bench render: {len(frames)} frames fused from {src} in memory ({t_load.ms / 1000:.1f} s), "
              f"{len(views)} views {args.width}x{args.height}, voxel {args.voxel_size_m} m, peers {peers or 'none'}",
              file=sys.stderr)
    mapper, vbg, fuse_s = fuse(frames, args, peers)
    systems = [VoxmapRenderer(mapper, args)]
    if vbg is not None:
        systems.append(Open3dRenderer(vbg, args))
    for s in systems:                                        # warm-up: untimed
        for v in views[:args.warmup]:
            s.draw(v)
    ms = {s.name: [] for s in systems}
    errs = {s.name: [] for s in systems}
    load_start = common.load_average()
    for i, v in enumerate(views):
        for s in systems:                                    # interleaved, view by view
            best, out = math.inf, None
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                out = s.draw(v)
                best = min(best, (time.perf_counter() - t0) * 1000.0)
            s.note_stats()
            ms[s.name].append(best)
            d, rgb, drawn = s.images(out)
            errs[s.name].append(_errors(d, rgb, drawn, v))
        if not args.quiet:
            parts = "  ".join(f"{k} {ms[k][-1]:.1f} ms" for k in ms)
            print(f"  view {i + 1}/{len(views)} ({v['source']}): {parts}", file=sys.stderr, flush=True)
    load_end = common.load_average()
    results = {}
    for s in systems:
        r = common.timing_stats(ms[s.name], prefix="ms_per_view")
        for k in ("first50_median", "last50_median", "last50_over_first50", "total_s"):
            r.pop(k, None)
        r["ms_per_view"] = [round(x, 3) for x in ms[s.name]]
        e = np.concatenate([x["abs_err"] for x in errs[s.name]]) if errs[s.name] else np.zeros(0)
        r["depth_abs_err_median_m"] = float(np.median(e)) if e.size else None
        r["depth_abs_err_mean_m"] = float(e.mean()) if e.size else None
        r["depth_abs_err_p90_m"] = float(np.percentile(e, 90)) if e.size else None
        r["depth_abs_err_median_per_view_m"] = [float(np.median(x["abs_err"])) if x["abs_err"].size else None
                                                for x in errs[s.name]]
        r["coverage_mean"] = float(np.mean([x["coverage"] for x in errs[s.name]]))
        ce = [x["color_err"] for x in errs[s.name] if "color_err" in x]
        r["color_abs_err_median_u8"] = float(np.median(np.concatenate(ce))) if ce and sum(c.size for c in ce) else None
        r["fusion_s"] = fuse_s.get(s.name)
        results[s.name] = r
    vm = systems[0]
    results["voxmap"].update({
        "field_build_ms": vm.build_ms, "render_backend": vm.backend, "field_cells_level0": vm.field.num_cells,
        "cells_per_view_median": float(np.median([st["cells"] for st in vm.stats])),
        "bricks": int(mapper.octree.num_bricks), "sharpness_per_m": vm.field.sharpness,
        "torch_threads": torch.get_num_threads()})
    if vm.backend == "cpu":
        for k in ("pack_ms", "bin_ms", "sort_draw_ms", "entries", "pixel_cell_tests", "pixel_cell_hits"):
            results["voxmap"][f"{k}_median"] = float(np.median([st[k] for st in vm.stats]))
    if "open3d_vbg" in results:
        results["open3d_vbg"]["blocks"] = int(vbg.hashmap().size())
        # Depth error on the pixels both systems draw (the same pixel set for both).
        for name in ("voxmap", "open3d_vbg"):
            vals = []
            for j in range(len(views)):
                ev, eo = errs["voxmap"][j]["err_img"], errs["open3d_vbg"][j]["err_img"]
                common_px = ~np.isnan(ev) & ~np.isnan(eo)
                vals.append(errs[name][j]["err_img"][common_px])
            e = np.concatenate(vals) if vals else np.zeros(0)
            results[name]["depth_abs_err_median_common_pixels_m"] = float(np.median(e)) if e.size else None
    bar = {}
    if "open3d_vbg" in results:
        v, o = results["voxmap"], results["open3d_vbg"]
        bar = {"voxmap_ms_le_open3d_ms": v["ms_per_view_median"] <= o["ms_per_view_median"],
               "voxmap_depth_err_le_open3d_plus_2mm": (v["depth_abs_err_median_m"] is not None and
                                                      o["depth_abs_err_median_m"] is not None and
                                                      v["depth_abs_err_median_m"] <= o["depth_abs_err_median_m"]
                                                      + BAR_DEPTH_SLACK_M)}
    if args.sim:
        v = results["voxmap"]
        bar["heldout_depth_err_le_1_voxel"] = (v["depth_abs_err_median_m"] is not None
                                               and v["depth_abs_err_median_m"] <= args.voxel_size_m)
    return {
        "command": common.command_line(), "equivalent_command": common.equivalent_command(args, "render"),
        "benchmark": "render", "machine": common.machine_info(), "code": common.code_fingerprint(),
        "data": src, "frames_fused": len(frames), "views": len(views), "view_sources": [v["source"] for v in views],
        "image_size": [args.width, args.height], "repeat": args.repeat, "warmup_views": args.warmup,
        "schedule": "interleaved (systems take turns view by view; each view drawn --repeat times, fastest kept)",
        "load_average_start": load_start, "load_average_end": load_end,
        "settings": {"voxel_size_m": args.voxel_size_m, "trunc_vox": args.trunc_vox, "max_range_m": args.max_range_m,
                     "depth_min_m": DEPTH_MIN_M, "samples": args.samples, "sharpness_vox": args.sharpness_vox,
                     "lod_px": args.lod_px, "open3d_weight_threshold": VBG_WEIGHT_THRESHOLD,
                     "depth_reference": "input depth of the fused frames" if args.data else
                     "exact ground-truth depth at held-out poses"},
        "timed": {"voxmap": "TsdfField.voxels(camera, lod_px) + render(...) (depth, colour, alpha, normals, ids)",
                  "open3d_vbg": "VoxelBlockGrid.ray_cast(all active blocks, ['depth', 'color'])",
                  "not_timed": "fusion; TsdfField build (field_build_ms, once per map); Open3D key_tensor()"},
        "results": results,
        "ratios": ({"voxmap_over_open3d_vbg_ms": common.ratio(results["voxmap"]["ms_per_view_median"],
                                                              results["open3d_vbg"]["ms_per_view_median"])}
                   if "open3d_vbg" in results else {}),
        "bar": bar,
    }


def print_report(payload: dict, file=None) -> None:
    rows = []
    for name, r in payload["results"].items():
        rows.append({"system": name, "median": r.get("ms_per_view_median"), "p95": r.get("ms_per_view_p95"),
                     "err": None if r.get("depth_abs_err_median_m") is None else r["depth_abs_err_median_m"] * 1000,
                     "cover": r.get("coverage_mean"), "col": r.get("color_abs_err_median_u8")})
    common.print_table(rows, [("system", "system"), ("median", "ms/view med"), ("p95", "p95"),
                              ("err", "depth err med mm"), ("cover", "coverage"), ("col", "rgb err u8")],
                       title=f"Rendering {payload['views']} views {payload['image_size'][0]}x{payload['image_size'][1]}"
                             f" after fusing {payload['frames_fused']} frames, voxel "
                             f"{payload['settings']['voxel_size_m']} m", file=file)
    v = payload["results"]["voxmap"]
    print(f"  voxmap field build (once per map): {v['field_build_ms']:.1f} ms; backend {v['render_backend']}", file=file)
    for k, val in payload.get("ratios", {}).items():
        print(f"  {k:32s} {common.fmt(val)}", file=file)
    for k, val in payload.get("bar", {}).items():
        print(f"  bar {k}: {val}", file=file)


def main(args) -> int:
    return common.run_and_report(run, print_report, args)
