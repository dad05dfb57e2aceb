"""`voxmap bench ...`: side-by-side benchmarks against peer systems (results in docs/BENCHMARKS.md)."""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="bench", required=True)
    from . import accuracy, lidar, render, rgbd
    from ..ros import bench_node as node          # the node benchmark talks DDS: it lives in ros/
    rgbd.add_arguments(sub.add_parser("rgbd", help="RGB-D TSDF+colour fusion vs Open3D"))
    lidar.add_arguments(sub.add_parser("lidar", help="LiDAR occupancy+TSDF vs OctoMap"))
    accuracy.add_arguments(sub.add_parser("accuracy", help="mesh accuracy vs ground truth (sim scene): voxmap vs Open3D"))
    render.add_arguments(sub.add_parser("render", help="render a fused map: voxmap rasterizer vs Open3D ray_cast"))
    node.add_arguments(sub.add_parser("node", help="the ROS node over DDS: throughput, drops and latency"))


def main(args) -> int:
    from . import accuracy, lidar, render, rgbd
    from ..ros import bench_node as node          # the node benchmark talks DDS: it lives in ros/
    return {"rgbd": rgbd.main, "lidar": lidar.main, "accuracy": accuracy.main, "node": node.main,
            "render": render.main}[args.bench](args)
