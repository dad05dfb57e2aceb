"""Offline mapping: dataset -> Mapper -> outputs, with progress and a summary.

`run()` reads as the list of steps it performs.
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import VoxmapConfig
from .jsonio import dumps
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
    # Rendered views (voxmap_ros.render): every Nth RGB-D frame, 0 = off; side-by-side pictures
    # for the first `render_compare` of them.
    render_every: int = 0
    render_compare: int = 3

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
    from .datasets import rosbag
    if rosbag.is_bag(path):
        try:
            return rosbag.BagDataset(path, depth_scale=config.rgbd.depth_scale, **(bag_options or {}))
        except ImportError as e:            # rosbags is a dependency, but a trimmed install may lack it
            raise ValueError(f"{path} is a rosbag2; reading it needs the 'rosbags' package "
                             f"(pip install rosbags): {e}") from None
    ds = open_dataset(path)
    if isinstance(ds, RgbdFolder):
        ds.depth_scale = config.rgbd.depth_scale
    return ds


def run(source: str | Path, config: VoxmapConfig, options: ReplayOptions) -> dict:
    """Fuse every frame of `source`, write all outputs to options.out_dir, return the summary."""
    if isinstance(options.render_every, bool) or not isinstance(options.render_every, int) or options.render_every < 0:
        raise ValueError(f"--render-every must be an integer >= 0 (0 = off), got {options.render_every!r}")
    out = Path(options.out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; expected a directory (created when missing)")
    dataset = open_source(source, config, options.bag_options())
    mapper = Mapper(config)
    out.mkdir(parents=True, exist_ok=True)              # only once the run can start: a failed one leaves nothing
    config.save(out / "config.yaml")                       # the effective config, next to the results
    indices = range(0, len(dataset), max(1, options.stride))
    if options.max_frames is not None:
        indices = indices[:options.max_frames]
    rejected = []
    renders = RenderLog(out / "render", options.render_every, options.render_compare, config)
    t_start = time.perf_counter()
    from .datasets.folder import RgbdFolder
    rgbd_only = isinstance(dataset, RgbdFolder)
    for i in _progress(indices, options.progress, "integrating"):
        frame = None
        try:
            frame = dataset[i]                            # an unreadable file is one bad frame too
            mapper.integrate(frame)
        except (ValueError, OSError) as e:                # one bad frame must not end a long run
            rejected.append({"frame": int(i), "error": str(e)})
            log.warning("frame %d rejected: %s", i, e)
            if (frame.depth is not None) if frame is not None else rgbd_only:
                renders.count_rejected_rgbd()             # renders stay at RGB-D frames 0, N, 2N, ...
            continue
        renders.after_integrating(mapper, int(i), frame)
    wall_s = time.perf_counter() - t_start
    paths = mapper.save_outputs(out)
    summary = {"source": str(source), "frames": len(indices), **mapper.summary(),
               "frames_rejected": len(rejected),             # unreadable files too, not only the mapper's
               "wall_s": wall_s, "rejected": rejected, "outputs": paths}
    source_summary = getattr(dataset, "summary", None)
    if callable(source_summary):                          # a bag: what was found, and skipped while indexing
        summary["source_summary"] = source_summary()
        summary["source_skipped"] = {k: v for k, v in summary["source_summary"].get("skipped", {}).items() if v}
    if options.render_every:
        summary["render"] = renders.summary()
    (out / "summary.json").write_text(dumps(summary, indent=2))
    return summary


class RenderLog:
    """`--render-every N`: after integrating every Nth RGB-D frame, render the map from that frame's
    camera (pose, intrinsics, size) and write render/NNNNNN_depth.png (uint16 mm, 0 = nothing
    drawn) and render/NNNNNN_color.png (NNNNNN = the frame's index in the source), plus
    render/NNNNNN_compare.png (input | rendered | abs depth error) for the first `compare` of them.
    Depth errors count the pixels where both the input (within rgbd.min/max_range_m) and the
    rendering have a depth."""

    def __init__(self, out_dir: Path, every: int, compare: int, config: VoxmapConfig):
        self.out_dir, self.every, self.compare, self.config = out_dir, int(every), int(compare), config
        self.rgbd_seen = 0
        self.frames: list[int] = []
        self.errors: list = []
        self.valid_input = 0
        self.ms: list[float] = []
        self.pictures: list[str] = []

    def count_rejected_rgbd(self) -> None:
        """An RGB-D frame that was not integrated still counts in 0, N, 2N, ..."""
        self.rgbd_seen += 1

    def after_integrating(self, mapper, index: int, frame) -> None:
        if not self.every or frame.depth is None:
            return
        self.rgbd_seen += 1
        if (self.rgbd_seen - 1) % self.every:
            return
        from .outputs import View, compare_picture, render_view, write_rendered
        h, w = frame.depth.shape[:2]
        rv = render_view(mapper, View(frame.K, frame.T_W_S, w, h), self.config.render)
        stem = f"{index:06d}"
        write_rendered(rv, self.out_dir, stem)
        d = np.asarray(frame.depth)
        if d.dtype == np.uint16:
            scale = frame.depth_scale if frame.depth_scale is not None else self.config.rgbd.depth_scale
            d = d.astype(np.float64) / scale
        d = np.asarray(d, np.float64)
        r = self.config.rgbd
        d = np.where(np.isfinite(d) & (d >= r.min_range_m) & (d <= r.max_range_m) & (d > 0), d, np.nan)
        both = np.isfinite(d) & rv.valid
        self.errors.append(np.abs(rv.depth_m[both].astype(np.float64) - d[both]).astype(np.float32))
        self.valid_input += int(np.isfinite(d).sum())
        self.ms.append(rv.ms)
        self.frames.append(index)
        if len(self.pictures) < self.compare:
            path = compare_picture(frame.rgb, d, rv, self.out_dir / f"{stem}_compare.png",
                                   err_max_m=2.0 * mapper.octree.voxel_size_m)
            self.pictures.append(str(path))

    def summary(self) -> dict:
        s = {"every": self.every, "dir": str(self.out_dir), "rendered_frames": len(self.frames),
             "frames": self.frames, "compare_pictures": self.pictures}
        if not self.frames:
            s["note"] = "the source has no RGB-D frames: nothing rendered"
            log.warning("--render-every %d: the source has no RGB-D frames (LiDAR only); nothing rendered",
                        self.every)
            return s
        err = np.concatenate(self.errors) if self.errors else np.zeros(0, np.float32)
        s.update({"depth_abs_error_median_m": float(np.median(err)) if err.size else None,
                  "depth_abs_error_p90_m": float(np.percentile(err, 90)) if err.size else None,
                  "depth_compared_pixels": int(err.size),
                  "coverage": float(err.size / self.valid_input) if self.valid_input else 0.0,
                  "ms_per_render_median": float(np.median(self.ms))})
        return s


def _progress(items, enabled: bool, desc: str):
    """tqdm with frames/s and ETA on a terminal or when asked; a plain iterator otherwise."""
    if not enabled:
        return items
    from tqdm import tqdm
    return tqdm(items, desc=desc, unit="frame", file=sys.stderr, mininterval=1.0, dynamic_ncols=True)
