"""`voxmap bench ...`: side-by-side benchmarks against peer systems (results in docs/BENCHMARKS.md)."""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="bench", required=True)
    from . import lidar, rgbd
    rgbd.add_arguments(sub.add_parser("rgbd", help="RGB-D TSDF+colour fusion vs Open3D"))
    lidar.add_arguments(sub.add_parser("lidar", help="LiDAR occupancy+TSDF vs OctoMap"))


def main(args) -> int:
    from . import lidar, rgbd
    return {"rgbd": rgbd.main, "lidar": lidar.main}[args.bench](args)
