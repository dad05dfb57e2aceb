"""`voxmap` command: replay, sim, eval, bench, demo."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .config import MAP_BACKENDS, VoxmapConfig


def _config(args) -> VoxmapConfig:
    cfg = VoxmapConfig.load(args.config) if getattr(args, "config", None) else VoxmapConfig()
    if getattr(args, "voxel_size_m", None) is not None:
        cfg.set("map.voxel_size_m", args.voxel_size_m)
    if getattr(args, "device", None):
        cfg.set("map.device", args.device)
    if getattr(args, "backend", None):
        cfg.set("map.backend", args.backend)
    for item in getattr(args, "set", None) or []:
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"--set {item!r}: expected SECTION.KEY=VALUE")
        cfg.set(key, parse_yaml_value(value, f"--set {item!r}"))
    cfg.validate()
    return cfg


def parse_yaml_value(text: str, what: str):
    """A YAML scalar or list from the command line; ValueError naming `what` when it is not one."""
    import yaml

    from .config import yaml_load
    if not text.strip():
        return ""                       # `--set node.body_frame=`: the empty string, not YAML's null
    try:
        return yaml_load(text)
    except yaml.YAMLError as e:
        raise ValueError(f"{what}: not a YAML value ({' '.join(str(e).split())})") from None


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {n}")
    return n


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config (plain tree or ROS params file)")
    p.add_argument("--voxel-size-m", type=float, help="override map.voxel_size_m")
    p.add_argument("--device", help="torch device for the map: cpu or cuda")
    p.add_argument("--backend", choices=MAP_BACKENDS, help="kernel backend")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override any config field")


def cmd_replay(args) -> int:
    from .pipeline import ReplayOptions, run
    options = ReplayOptions(Path(args.out), args.max_frames, args.stride, not args.quiet,
                            depth_topic=args.depth_topic, color_topic=args.color_topic, info_topic=args.info_topic,
                            cloud_topic=args.cloud_topic, map_frame=args.map_frame,
                            render_every=args.render_every)
    summary = run(args.source, _config(args), options)
    _print_summary(summary)
    if summary.get("source_skipped"):
        print(f"  {'skipped in the source':22s} {summary['source_skipped']}")
    r = summary.get("render")
    if r is not None:
        if r["rendered_frames"]:
            err = r["depth_abs_error_median_m"]
            print(f"  {'rendered views':22s} {r['rendered_frames']} in {r['dir']}, median |depth error| "
                  + ("n/a" if err is None else f"{err * 1000:.1f} mm") + f", coverage {r['coverage']:.2f}")
        else:
            print(f"  {'rendered views':22s} none: {r['note']}")
    if summary["frames"] and not summary["frames_integrated"] and not summary.get("frames_empty"):
        print(f"voxmap replay: error: none of the {summary['frames']} frames could be integrated "
              f"(first reason: {summary['rejected'][0]['error'] if summary['rejected'] else 'unknown'}); "
              f"the outputs in {args.out} are empty", file=sys.stderr)
        return 1
    return 0


def cmd_sim(args) -> int:
    from .sim.dataset_writer import generate_dataset
    info = generate_dataset(args.scene, args.seed, Path(args.out), n_frames=args.frames, n_scans=args.scans)
    print(json.dumps(info, indent=2, default=str))
    return 0


def cmd_eval(args) -> int:
    from .eval.metrics import mesh_metrics
    if args.json and not Path(args.json).parent.is_dir():
        raise ValueError(f"--json {args.json}: folder {Path(args.json).parent} does not exist")
    from .jsonio import dumps
    m = mesh_metrics(args.mesh, args.gt, tau_m=args.tau_m)
    text = dumps(m, indent=2)                  # an empty mesh's infinite distances as null
    if args.json:
        Path(args.json).write_text(text)
    print(text)
    return 0


def cmd_bench(args) -> int:
    from . import bench
    return bench.main(args)


def cmd_demo(args) -> int:
    if not args.offline:
        import importlib.util
        if importlib.util.find_spec("rclpy") is None:      # rclpy itself is imported in ros/ only
            raise ValueError("the ROS demo needs rclpy; run 'make setup' or use --offline")
        from .ros.demo import run_ros_demo
        return run_ros_demo(Path(args.out), seed=args.seed)
    from .demo import run_demo
    return run_demo(Path(args.out), args)


def _print_summary(s: dict) -> None:
    keys = ("frames", "frames_integrated", "frames_rejected", "frames_empty", "ms_per_frame_median", "ms_per_frame_p95",
            "voxels", "bricks", "map_bytes", "backend")
    for k in keys:
        if k in s:
            v = s[k]
            print(f"  {k:22s} {v:.2f}" if isinstance(v, float) else f"  {k:22s} {v}")
    for k, v in s.get("outputs", {}).items():
        print(f"  {k:22s} {v}")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="voxmap", description=__doc__)
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("replay", help="fuse a dataset folder or rosbag2 into a mesh, map and 2D grid")
    p.add_argument("source", help="dataset folder (RGB-D or LiDAR) or rosbag2")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--max-frames", type=_positive_int, help="stop after this many frames")
    p.add_argument("--stride", type=_positive_int, default=1, help="use every Nth frame")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--render-every", type=int, default=0, metavar="N",
                   help="after every Nth RGB-D frame, render the map from its camera into OUT/render/ "
                        "(depth + colour PNGs; input | rendered | depth error pictures for the first 3); "
                        "0 = off; LiDAR-only sources: nothing to render")
    for role in ("depth", "color", "info", "cloud"):
        p.add_argument(f"--{role}-topic", help=f"rosbag2: the {role} topic (default: found by message type)")
    p.add_argument("--map-frame", help="rosbag2: world frame of the TF tree (default: the root of the sensor frames)")
    _add_config_args(p)
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("sim", help="generate a synthetic dataset with ground truth")
    p.add_argument("--scene", choices=["indoor", "outdoor"], default="indoor")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frames", type=int, default=60, help="RGB-D frames")
    p.add_argument("--scans", type=int, default=20, help="LiDAR scans")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_sim)

    p = sub.add_parser("eval", help="mesh accuracy / completeness / F-score against ground truth")
    p.add_argument("--mesh", required=True)
    p.add_argument("--gt", required=True)
    p.add_argument("--tau-m", type=float, default=0.05)
    p.add_argument("--json", help="write the metrics here")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("bench", help="benchmarks against peer systems")
    from . import bench
    bench.add_arguments(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("demo", help="the built-in example: a simulated room as a rosbag2 played into the node "
                                    "over DDS; outputs scored against ground truth")
    p.add_argument("--out", default="out/demo")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--offline", action="store_true", help="no ROS: fuse the simulated frames in-process")
    p.set_defaults(func=cmd_demo)
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ValueError, OSError) as e:          # bad input or an unusable path: one line, no traceback
        print(f"voxmap {args.cmd}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
