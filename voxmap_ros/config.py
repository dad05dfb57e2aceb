"""Configuration: one tree of dataclasses for YAML files, the CLI and ROS parameters.

Every field carries its unit in its name and a description in its metadata, so that the ROS
front end can declare parameters with descriptions and ranges from the same source.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


def _f(default, description: str, *, lo=None, hi=None, choices=None, runtime: bool = False):
    """A config field with a description, an allowed range and whether it may change at run time."""
    meta = {"description": description, "lo": lo, "hi": hi, "choices": choices, "runtime": runtime,
            "type": type(default)}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


MAP_BACKENDS = ("auto", "cpp", "triton", "torch")      # map.backend; see Mapper._choose_backend


@dataclass
class MapConfig:
    voxel_size_m: float = _f(0.05, "Edge length of one level-0 voxel, metres", lo=0.001, hi=10.0)
    octree_levels: int = _f(6, "Parent levels above the bricks (level L nodes span 2^L bricks)", lo=1, hi=12)
    device: str = _f("cpu", "Torch device for map tensors: 'cpu' or 'cuda[:N]'")
    backend: str = _f("auto", "Kernel backend: 'auto' (compiled C++ on a CPU map, Triton on a CUDA map, when "
                              "available), 'cpp', 'triton' (RGB-D voxel update on CUDA) or 'torch'",
                      choices=MAP_BACKENDS)
    initial_bricks: int = _f(4096, "Bricks allocated up front (the pools grow by doubling)", lo=1, hi=1 << 26)
    reserve_bricks: int = _f(1 << 20, "Bricks of address space reserved up front on a CPU map so that the pools "
                                      "grow in place instead of copying the map (memory is committed only as "
                                      "bricks are used; ~4.7 KB of address space per brick); 0 = grow by copying (use 0 "
                                      "under strict overcommit, vm.overcommit_memory=2)",
                             lo=0, hi=1 << 26)
    clearing_radius_m: float = _f(0.0, "Drop bricks farther than this from the latest sensor position (of a frame that observed something); 0 = off",
                                  lo=0.0, hi=1e6, runtime=True)
    frame_id: str = _f("map", "Frame of the map (world)")


@dataclass
class TsdfConfig:
    trunc_vox: float = _f(4.0, "Truncation distance in voxels", lo=1.0, hi=64.0)
    max_weight: float = _f(64.0, "Cap on the accumulated TSDF weight per voxel", lo=1.0, hi=60000.0, runtime=True)
    weighting: str = _f("constant", "Per-observation weight: 'constant' or 'depth' (1/z^2 drop-off past 1 m)",
                        choices=("constant", "depth"), runtime=True)
    min_weight_mesh: float = _f(0.5, "Voxels with less weight are left out of meshes", lo=0.0, hi=60000.0,
                                runtime=True)
    mesh_max_jump_vox: float = _f(0.0, "A mesh cell is skipped when its 8 TSDF corners span more than this many "
                                       "voxels, mostly seams between disagreeing observations (a true surface spans "
                                       "at most the cell diagonal, 1.7 voxels, a few times that at grazing "
                                       "incidence); 0 = off. 7 keeps surfaces seen up to ~75 degrees incidence: "
                                       "fewer stray triangles (higher precision) but some surface lost (lower "
                                       "recall), see docs/BENCHMARKS.md", lo=0.0, hi=1e6, runtime=True)


@dataclass
class OccupancyConfig:
    prob_hit: float = _f(0.7, "Probability that a cell with a return is occupied", lo=0.5, hi=0.999,
                         runtime=True)
    prob_miss: float = _f(0.4, "Probability that a cell a ray passes through is occupied", lo=0.001, hi=0.5,
                          runtime=True)
    clamp_min: float = _f(0.1192, "Lower clamp of occupancy probability", lo=0.001, hi=0.5, runtime=True)
    clamp_max: float = _f(0.971, "Upper clamp of occupancy probability", lo=0.5, hi=0.999, runtime=True)
    occupied_threshold: float = _f(0.5, "Probability above which a cell counts as occupied", lo=0.0, hi=1.0,
                                   runtime=True)


@dataclass
class RgbdConfig:
    min_range_m: float = _f(0.1, "Depth readings closer than this are ignored, metres", lo=0.0, hi=1000.0)
    max_range_m: float = _f(5.0, "Depth readings farther than this are ignored, metres", lo=0.01, hi=1000.0)
    depth_scale: float = _f(1000.0, "uint16 depth units per metre (1000 = millimetres)", lo=1e-6, hi=1e9)
    pixel_lookup: str = _f("nearest", "Depth pixel a voxel reads: 'nearest' (pixel centres at integer coordinates, "
                                      "as K says) or 'floor' (pixel floor(u), Open3D VoxelBlockGrid's choice: half "
                                      "a pixel off, for like-for-like comparisons)", choices=("nearest", "floor"))


@dataclass
class LidarConfig:
    min_range_m: float = _f(0.5, "Returns closer than this are ignored, metres", lo=0.0, hi=1000.0)
    max_range_m: float = _f(50.0, "Returns farther are cleared up to this range, not marked hit, metres",
                            lo=0.1, hi=10000.0)
    free_space: bool = _f(True, "Update free space along every ray (occupancy misses, ghost clearing)")


@dataclass
class GridConfig:
    z_min_m: float = _f(0.1, "Bottom of the height band projected into the 2D grid, metres", runtime=True)
    z_max_m: float = _f(1.5, "Top of the height band projected into the 2D grid, metres", runtime=True)


@dataclass
class NodeConfig:
    """ROS front end only (topics, rates, QoS, poses); the core ignores this section."""
    depth_topic: str = _f("camera/depth/image_raw", "Depth image topic (16UC1 mm or 32FC1 m); '' = no RGB-D")
    color_topic: str = _f("camera/color/image_raw", "Colour image topic (rgb8/bgr8/rgba8/bgra8/mono8); '' = none")
    camera_info_topic: str = _f("camera/depth/camera_info", "CameraInfo of the depth image")
    cloud_topic: str = _f("lidar/points", "PointCloud2 topic; '' = no LiDAR")
    sensor_qos: str = _f("sensor_data", "QoS of sensor subscriptions: 'sensor_data' (best effort) or 'reliable'",
                         choices=("sensor_data", "reliable"))
    color_sync_tolerance_s: float = _f(0.02, "Max stamp difference when pairing depth and colour, seconds",
                                       lo=0.0, hi=1.0, runtime=True)
    pose_source: str = _f("auto", "'tf' (needs tf2_ros), 'topic' (pose_topic) or 'auto' (tf when importable)",
                          choices=("auto", "tf", "topic"))
    pose_topic: str = _f("pose", "Pose of the body in the map frame, for pose_source 'topic'")
    pose_topic_type: str = _f("PoseStamped", "Message type of pose_topic",
                              choices=("PoseStamped", "TransformStamped", "Odometry"))
    pose_durability: str = _f("volatile", "Durability requested for pose_topic: 'volatile' (matches any publisher) "
                              "or 'transient_local' (only latched publishers, such as voxmap's bag player; a late "
                              "match still gets the poses published before it)",
                              choices=("volatile", "transient_local"))
    pose_buffer_s: float = _f(10.0, "How long pose-topic samples are kept for interpolation, seconds; a stamp this "
                                    "much older than the newest counts as time jumping back (bag loop, clock reset)",
                              lo=0.1, hi=600.0)
    body_frame: str = _f("", "Child frame of the body pose on pose_topic (TransformStamped / Odometry), which "
                             "camera_extrinsic / lidar_extrinsic are relative to; sensor frames with a pose stream "
                             "of their own use it directly. '' = the PoseStamped pose, or the only child frame")
    camera_extrinsic: list = _f([0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
                                "T_body_camera as [x, y, z, roll, pitch, yaw] (m, rad), pose_source 'topic'")
    lidar_extrinsic: list = _f([0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
                               "T_body_lidar as [x, y, z, roll, pitch, yaw] (m, rad), pose_source 'topic'")
    tf_timeout_s: float = _f(0.05, "How long one TF lookup may wait, seconds", lo=0.0, hi=5.0, runtime=True)
    pose_wait_s: float = _f(1.0, "How long a frame may wait for its pose before it is dropped, seconds",
                            lo=0.0, hi=60.0, runtime=True)
    queue_size: int = _f(8, "Frames waiting for integration per sensor; the oldest is dropped beyond (8 rides "
                            "out a stall of half a second at 15 Hz)", lo=1, hi=1000)
    executor: str = _f("single", "rclpy executor of the node process: 'single' (SingleThreadedExecutor: the least "
                                 "CPU per message) or 'multi' (MultiThreadedExecutor, 3 threads). Callbacks only "
                                 "decode and enqueue; integration and outputs run on the node's own threads",
                       choices=("single", "multi"))
    compute_threads: int = _f(1, "CPU threads of the node process for integration and meshing (torch and "
                                 "the compiled kernels); 0 = one per core. 1 by default: with another process "
                                 "busy on one of 2 cores, 2 threads made integration 3.5x and meshing 11x slower",
                              lo=0, hi=256)
    max_points: int = _f(2_000_000, "Clouds with more points are subsampled to this many", lo=1000, hi=100_000_000,
                         runtime=True)
    mesh_rate_hz: float = _f(1.0, "Mesh (MarkerArray) publish rate, Hz; 0 = off", lo=0.0, hi=100.0, runtime=True)
    mesh_chunk_level: int = _f(2, "Octree level of mesh chunks (one marker each; level L = 2^L bricks a side)",
                               lo=0, hi=8)
    occupancy_rate_hz: float = _f(0.5, "OccupancyGrid publish rate, Hz; 0 = off", lo=0.0, hi=100.0, runtime=True)
    occupied_voxels_rate_hz: float = _f(0.5, "Occupied-voxel PointCloud2 rate, Hz; 0 = off", lo=0.0, hi=100.0,
                                        runtime=True)
    occupied_voxels_level: int = _f(0, "Octree level of published occupied cells (0 = voxels)", lo=0, hi=12,
                                    runtime=True)
    diagnostics_rate_hz: float = _f(1.0, "Diagnostics publish rate, Hz", lo=0.0, hi=100.0, runtime=True)
    prune_rate_hz: float = _f(0.1, "How often free subtrees are pruned, Hz; 0 = never", lo=0.0, hi=100.0,
                              runtime=True)
    output_dir: str = _f("voxmap_output", "Where ~/save_map writes its files")
    load_map_path: str = _f("", "Map file (.npz) to load at start; '' = start empty")


# The ROS optical frame looking along the map's +x axis, level (z forward, x right, y down).
_OPTICAL_ALONG_X = [-math.pi / 2, 0.0, -math.pi / 2]


@dataclass
class RenderConfig:
    """Views of the map drawn by the sparse-voxel rasterizer (voxmap_ros.render): the node's
    ~/render/* topics, and `voxmap replay --render-every` (which uses near/far, min_alpha, lod_px
    and backend; its views are the input frames' own cameras)."""
    rate_hz: float = _f(0.0, "Rendered view publish rate (~/render/depth, ~/render/color, ~/render/camera_info), "
                             "Hz; 0 = off", lo=0.0, hi=30.0, runtime=True)
    viewpoint: str = _f("latest_camera", "Node: 'latest_camera' (pose and intrinsics of the latest integrated "
                                         "RGB-D frame) or 'fixed' (fixed_pose, fixed_hfov_deg, width x height)",
                        choices=("latest_camera", "fixed"), runtime=True)
    fixed_pose: list = _f([0.0, 0.0, 1.5] + _OPTICAL_ALONG_X,
                          "Fixed view: T_map_camera as [x, y, z, roll, pitch, yaw] (m, rad) of the optical frame "
                          "(z forward, x right, y down); the default stands at 1.5 m looking along +x", runtime=True)
    fixed_hfov_deg: float = _f(60.0, "Fixed view: horizontal field of view, degrees (square pixels, centred "
                                     "principal point)", lo=1.0, hi=170.0, runtime=True)
    fixed_frame_id: str = _f("voxmap_render_camera", "Fixed view: frame_id of the published images and CameraInfo",
                             runtime=True)
    width: int = _f(320, "Rendered image width, pixels (fixed view); a camera view is scaled down to fit "
                         "width x height, never up", lo=8, hi=4096, runtime=True)
    height: int = _f(240, "Rendered image height, pixels (see width)", lo=8, hi=4096, runtime=True)
    near_m: float = _f(0.1, "Nearest depth drawn, metres", lo=0.001, hi=1000.0, runtime=True)
    far_m: float = _f(10.0, "Farthest depth drawn, metres", lo=0.01, hi=10000.0, runtime=True)
    min_alpha: float = _f(0.5, "Pixels of less opacity count as empty: NaN depth (0 in PNGs), black colour",
                          lo=0.001, hi=1.0, runtime=True)
    lod_px: float = _f(1.0, "Level of detail: cells smaller than this many pixels are drawn from coarser levels; "
                            "0 = off", lo=0.0, hi=64.0, runtime=True)
    backend: str = _f("auto", "Rasterizer backend: 'auto' (compiled CPU kernels / Triton on CUDA when available), "
                              "'cpu', 'triton' or 'reference' (pure torch)",
                      choices=("auto", "cpu", "triton", "reference"), runtime=True)


@dataclass
class VoxmapConfig:
    map: MapConfig = field(default_factory=MapConfig)
    tsdf: TsdfConfig = field(default_factory=TsdfConfig)
    occupancy: OccupancyConfig = field(default_factory=OccupancyConfig)
    rgbd: RgbdConfig = field(default_factory=RgbdConfig)
    lidar: LidarConfig = field(default_factory=LidarConfig)
    grid: GridConfig = field(default_factory=GridConfig)
    node: NodeConfig = field(default_factory=NodeConfig)
    render: RenderConfig = field(default_factory=RenderConfig)

    # ---- conversions ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "VoxmapConfig":
        """Build from a nested dict; unknown sections/keys and invalid values raise ValueError."""
        cfg = cls()
        if data is not None and not isinstance(data, dict):
            raise ValueError(f"a config must be a mapping of sections, got a {type(data).__name__}")
        for section, values in (data or {}).items():
            if not hasattr(cfg, section):
                raise ValueError(f"unknown config section '{section}'; expected one of {section_names()}")
            if not isinstance(values, dict):
                raise ValueError(f"config section '{section}' must be a mapping, got {type(values).__name__}")
            for key, value in values.items():
                cfg.set(f"{section}.{key}", value)
        cfg.validate()
        return cfg

    @classmethod
    def load(cls, path: str | Path) -> "VoxmapConfig":
        """Load a YAML file. Accepts either the plain tree or a ROS params file
        (`<node>: {ros__parameters: {...}}`) with dotted or nested keys."""
        path = Path(path)
        if not path.exists() or path.is_dir():
            raise ValueError(f"config file {path} does not exist or is a directory")
        try:
            data = yaml_load(path.read_text()) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ValueError(f"config file {path} is not valid YAML: {' '.join(str(e).split())}") from None
        if not isinstance(data, dict):
            raise ValueError(f"config file {path} must hold a mapping of sections (or a ROS params file), "
                             f"got a {type(data).__name__}")
        try:
            return cls.from_dict(unwrap_ros_params(data))
        except ValueError as e:
            raise ValueError(f"config file {path}: {e}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    # ---- flat access ---------------------------------------------------------------------
    def set(self, dotted: str, value: Any) -> None:
        """Set `section.key` after checking type and range; raises ValueError and leaves the config
        unchanged when the value is invalid."""
        section, key = _split(dotted)
        sub = getattr(self, section)
        f = {x.name: x for x in dataclasses.fields(sub)}.get(key)
        if f is None:
            raise ValueError(f"unknown parameter '{dotted}'; '{section}' has {sorted(x.name for x in dataclasses.fields(sub))}")
        setattr(sub, key, _coerce(dotted, f, value))

    def get(self, dotted: str) -> Any:
        section, key = _split(dotted)
        return getattr(getattr(self, section), key)

    def validate(self) -> None:
        for lo_key, hi_key in (("rgbd.min_range_m", "rgbd.max_range_m"), ("lidar.min_range_m", "lidar.max_range_m"),
                               ("occupancy.clamp_min", "occupancy.clamp_max"), ("grid.z_min_m", "grid.z_max_m"),
                               ("render.near_m", "render.far_m")):
            if self.get(lo_key) >= self.get(hi_key):
                raise ValueError(f"{lo_key}={self.get(lo_key)} must be below {hi_key}={self.get(hi_key)}")
        if self.node.occupied_voxels_level > self.map.octree_levels:
            raise ValueError(f"node.occupied_voxels_level={self.node.occupied_voxels_level} must be at most "
                             f"map.octree_levels={self.map.octree_levels} (the map has levels 0..{self.map.octree_levels})")
        if not re.fullmatch(r"cpu|cuda(:\d+)?", self.map.device):
            raise ValueError(f"map.device must be 'cpu', 'cuda' or 'cuda:N', got '{self.map.device}'")


class _Yaml12Numbers(yaml.SafeLoader):
    """PyYAML's safe loader, but numbers as YAML 1.2 (and ROS's parameter parser) read them:
    PyYAML alone takes 1e-3 and 5E2 (an exponent without a dot) for strings."""


_Yaml12Numbers.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$"),
    list("-+0123456789."))


def yaml_load(text: str):
    """yaml.safe_load with YAML 1.2 numbers (see _Yaml12Numbers); yaml.YAMLError on bad text."""
    return yaml.load(text, Loader=_Yaml12Numbers)     # noqa: S506 - a SafeLoader subclass


def section_names() -> list[str]:
    return [f.name for f in dataclasses.fields(VoxmapConfig)]


def iter_fields(cfg: VoxmapConfig | None = None):
    """Yield (dotted_name, value, dataclasses.Field) for every leaf parameter."""
    cfg = cfg or VoxmapConfig()
    for sf in dataclasses.fields(cfg):
        sub = getattr(cfg, sf.name)
        for f in dataclasses.fields(sub):
            yield f"{sf.name}.{f.name}", getattr(sub, f.name), f


# Parameters rclpy declares on every node; a parameter file for the node may set them too.
ROS_OWN_PARAMETERS = ("use_sim_time", "start_type_description_service")


# The node's name in the launch files: in a params file for several nodes, its entry (after `/**`,
# the one for every node) is the one that applies.
NODE_NAME = "voxmap"


def unwrap_ros_params(data: dict) -> dict:
    """Turn `{node: {ros__parameters: {a.b: v}}}` or `{a: {b: v}}` into the nested tree. A
    params file with entries for several nodes gives `/**` and then `voxmap` (or `/voxmap`)."""
    nodes = {str(k): v for k, v in data.items() if isinstance(v, dict) and "ros__parameters" in v}
    if nodes and len(nodes) != len(data):
        raise ValueError(f"a params file mixes node entries ({sorted(nodes)}) with other keys "
                         f"({sorted(str(k) for k in data if str(k) not in nodes)})")
    if len(nodes) > 1:
        chosen = [k for k in ("/**", NODE_NAME, "/" + NODE_NAME) if k in nodes]
        if not any(k != "/**" for k in chosen):
            raise ValueError(f"a params file for several nodes ({sorted(nodes)}) without an entry for "
                             f"'{NODE_NAME}'")
        tree: dict[str, dict] = {}
        for k in chosen:
            for section, values in unwrap_ros_params({k: nodes[k]}).items():
                tree.setdefault(section, {}).update(values)
        return tree
    if nodes:
        (only,) = nodes.values()
        data = only["ros__parameters"] or {}
    if "ros__parameters" in data:
        data = data["ros__parameters"] or {}
    tree = {}
    for key, value in data.items():
        key = str(key)
        if key in ROS_OWN_PARAMETERS or key == "qos_overrides" or key.startswith("qos_overrides."):
            continue                           # rclpy's own parameters may share the file
        if "." in key:
            section, leaf = key.split(".", 1)
        elif isinstance(value, dict):
            section, leaf = key, None
        else:
            raise ValueError(f"unknown config key '{key}': expected 'section.key' or a section "
                             f"mapping, sections {section_names()}")
        if section not in section_names():
            raise ValueError(f"unknown config section '{section}' (key '{key}'); expected one of {section_names()}")
        if leaf is None:
            tree.setdefault(section, {}).update(value)
        else:
            tree.setdefault(section, {})[leaf] = value
    return tree


def _split(dotted: str) -> tuple[str, str]:
    if dotted.count(".") != 1:
        raise ValueError(f"parameter name must be 'section.key', got '{dotted}'")
    section, key = dotted.split(".")
    if section not in section_names():
        raise ValueError(f"unknown config section '{section}'; expected one of {section_names()}")
    return section, key


def _coerce(name: str, f: dataclasses.Field, value: Any) -> Any:
    kind = f.metadata["type"]
    if kind is list:
        if not isinstance(value, (list, tuple)) or len(value) != 6 or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")
                for v in value):
            raise ValueError(f"{name} must be a list of 6 finite numbers [x, y, z, roll, pitch, yaw], got {value!r}")
        return [float(v) for v in value]
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {value!r}")
    elif kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} must be a number, got {value!r}")
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{name} must be finite, got {value!r}")
    elif kind is str:
        if not isinstance(value, str):
            raise ValueError(f"{name} must be a string, got {value!r}")
    meta = f.metadata
    if meta.get("choices") and value not in meta["choices"]:
        raise ValueError(f"{name} must be one of {list(meta['choices'])}, got {value!r}")
    if meta.get("lo") is not None and value < meta["lo"]:
        raise ValueError(f"{name} must be >= {meta['lo']}, got {value!r}")
    if meta.get("hi") is not None and value > meta["hi"]:
        raise ValueError(f"{name} must be <= {meta['hi']}, got {value!r}")
    return value


def ros_params_yaml(cfg: VoxmapConfig | None = None, node_name: str = "voxmap") -> str:
    """The config as a commented ROS 2 params file (`node: ros__parameters: section: key: value`),
    every parameter preceded by its description (units are in the names)."""
    cfg = cfg or VoxmapConfig()
    lines = ["# voxmap_ros parameters (generated by `python -m voxmap_ros.config`; units are in the names).",
             "# [runtime] marks parameters that may change while the node runs (ros2 param set).",
             f"{node_name}:", "  ros__parameters:"]
    for sf in dataclasses.fields(cfg):
        lines.append(f"    {sf.name}:")
        for f in dataclasses.fields(getattr(cfg, sf.name)):
            m = f.metadata
            rng = ""
            if m.get("choices"):
                rng = f" One of: {', '.join(m['choices'])}."
            elif m.get("lo") is not None:
                rng = f" Range [{m['lo']}, {m['hi']}]."
            tag = " [runtime]" if m["runtime"] else ""
            lines.append(f"      # {m['description']}.{rng}{tag}")
            value = getattr(getattr(cfg, sf.name), f.name)
            lines.append(f"      {f.name}: {yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import sys
    out = sys.argv[1] if len(sys.argv) > 1 else "config/voxmap.yaml"
    Path(out).write_text(ros_params_yaml())
    print(f"wrote {out}")
