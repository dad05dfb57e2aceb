"""Offline mapping: dataset -> Mapper -> outputs, with progress and a summary.

`run()` reads as the list of steps it performs.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .config import VoxmapConfig
from .core.mapper import Mapper

log = logging.getLogger(__name__)


@dataclass
class ReplayOptions:
    out_dir: Path
    max_frames: int | None = None
    stride: int = 1
    progress: bool = True
    # rosbag2 only: topic names / map frame (None = found by message type / the TF root).
    depth_topic: str | None = None
    color_topic: str | None = None
    info_topic: str | None = None
    cloud_topic: str | None = None
    map_frame: str | None = None

    def bag_options(self) -> dict:
        return {k: getattr(self, k) for k in ("depth_topic", "color_topic", "info_topic", "cloud_topic", "map_frame")
                if getattr(self, k) is not None}


def open_source(source: str | Path, config: VoxmapConfig, bag_options: dict | None = None):
    """A dataset object (len + getitem -> Frame) for a folder or a rosbag2 path. bag_options:
    keyword arguments of datasets.rosbag.BagDataset (topics, map frame) for bags."""
    from .datasets.folder import RgbdFolder, open_dataset
    path = Path(source)
    if not path.exists():
        raise ValueError(f"{path} does not exist: expected a dataset folder (color/ depth/ or velodyne/) "
                         "or a rosbag2 directory / .db3 / .mcap file")
    try:
        from .datasets import rosbag
        if rosbag.is_bag(path):
            return rosbag.BagDataset(path, depth_scale=config.rgbd.depth_scale, **(bag_options or {}))
    except ImportError:
        pass
    ds = open_dataset(path)
    if isinstance(ds, RgbdFolder):
        ds.depth_scale = config.rgbd.depth_scale
    return ds


def run(source: str | Path, config: VoxmapConfig, options: ReplayOptions) -> dict:
    """Fuse every frame of `source`, write all outputs to options.out_dir, return the summary."""
    out = Path(options.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dataset = open_source(source, config, options.bag_options())
    mapper = Mapper(config)
    config.save(out / "config.yaml")                       # the effective config, next to the results
    indices = range(0, len(dataset), max(1, options.stride))
    if options.max_frames is not None:
        indices = indices[:options.max_frames]
    rejected = []
    t_start = time.perf_counter()
    for i in _progress(indices, options.progress, "integrating"):
        frame = dataset[i]
        try:
            mapper.integrate(frame)
        except ValueError as e:                           # one bad frame must not end a long run
            rejected.append({"frame": int(i), "error": str(e)})
            log.warning("frame %d rejected: %s", i, e)
    wall_s = time.perf_counter() - t_start
    paths = mapper.save_outputs(out)
    summary = {"source": str(source), "frames": len(indices), **mapper.summary(),
               "wall_s": wall_s, "rejected": rejected, "outputs": paths}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _progress(items, enabled: bool, desc: str):
    """tqdm with frames/s and ETA on a terminal or when asked; a plain iterator otherwise."""
    if not enabled:
        return items
    from tqdm import tqdm
    return tqdm(items, desc=desc, unit="frame", file=sys.stderr, mininterval=1.0, dynamic_ncols=True)
