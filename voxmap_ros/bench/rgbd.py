"""`voxmap bench rgbd`: RGB-D TSDF + colour fusion, voxmap vs Open3D, on the same frames.

Every frame is read into memory before any timing, so disk I/O and image decoding are never
timed. What each timed number covers (one frame):
    voxmap            `Mapper.integrate(frame)` (uint16 -> metres conversion, brick allocation,
                      TSDF / colour / occupancy update). The octree's brick and parent summaries,
                      which VoxelBlockGrid does not have, are refreshed on the next query: with
                      `--summaries end` (default) once after the last frame ("end_of_run_ms"),
                      with `--summaries every-frame` inside every timed call.
    open3d_vbg        `VoxelBlockGrid.compute_unique_block_coordinates` + `VoxelBlockGrid.integrate`
                      (tensor images and matrices built beforehand, as voxmap's are numpy arrays)
    open3d_scalable   `RGBDImage.create_from_color_and_depth` (uint16 -> float conversion, depth
                      truncation) + `ScalableTSDFVolume.integrate`
Warm-up frames (``--warmup``) go through a throw-away instance of each system first; the timed
run then starts every system from an empty map over the same N frames, so the maps compared are
the same. Meshes are extracted after the timed run (timed separately) and compared: the Chamfer
distance between voxmap's and Open3D's meshes says whether both fused the same surfaces.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from ..config import MAP_BACKENDS
from . import common

PEERS = ("open3d", "open3d_vbg", "open3d_scalable", "none")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="RGB-D dataset folder (depth/, color/, intrinsics.txt, poses.txt)")
    p.add_argument("--frames", type=int, default=None, help="use the first N frames (default: all)")
    p.add_argument("--stride", type=int, default=1, help="use every Nth frame (default %(default)s)")
    p.add_argument("--voxel-size-m", type=float, default=0.02, help="voxel edge, metres (all systems) (default %(default)s)")
    p.add_argument("--trunc-vox", type=float, default=4.0, help="TSDF truncation in voxels (all systems) (default %(default)s)")
    p.add_argument("--max-range-m", type=float, default=5.0, help="ignore depth beyond this, metres (all systems) (default %(default)s)")
    p.add_argument("--depth-scale", type=float, default=1000.0, help="uint16 depth units per metre (default %(default)s)")
    p.add_argument("--peers", default="open3d",
                   help=f"comma-separated peers: {', '.join(PEERS)} ('open3d' = VBG and Scalable) (default %(default)s)")
    p.add_argument("--warmup", type=int, default=5, help="frames through a throw-away instance first (default %(default)s)")
    p.add_argument("--block-resolution", type=int, choices=(8, 16), default=8,
                   help="Open3D VoxelBlockGrid block edge in voxels (voxmap bricks are 8) (default %(default)s)")
    p.add_argument("--block-count", type=int, default=10000, help="Open3D VoxelBlockGrid initial block capacity (default %(default)s)")
    p.add_argument("--backend", choices=MAP_BACKENDS, default="auto", help="voxmap kernel backend (default %(default)s)")
    add_voxmap_fusion_arguments(p)
    p.add_argument("--device", default="cpu",
                   help="voxmap's map device, 'cpu' or 'cuda[:N]' (Open3D stays on the CPU) (default %(default)s)")
    p.add_argument("--no-mesh", action="store_true", help="skip mesh extraction and the cross-check")
    p.add_argument("--mesh-samples", type=int, default=200_000, help="points sampled per mesh for the Chamfer check (default %(default)s)")
    p.add_argument("--summaries", choices=("end", "every-frame"), default="end",
                   help="when voxmap refreshes its octree summaries (VoxelBlockGrid has none): once after the "
                        "last frame, timed as end_of_run_ms, or inside every timed call (default %(default)s)")
    p.add_argument("--repeat", type=int, default=1,
                   help="time the whole run R times (fresh maps each) and keep each frame's fastest time (default %(default)s)")
    p.add_argument("--sequential", action="store_true",
                   help="run each system over all frames in turn (default: interleave them frame by frame)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--quiet", action="store_true", help="no per-system progress lines")


VOXMAP_FUSION_DEFAULTS = {"device": "cpu", "pixel_lookup": "nearest", "mesh_max_jump_vox": 0.0}


def add_voxmap_fusion_arguments(p: argparse.ArgumentParser) -> None:
    """voxmap fusion / meshing choices shared by `bench rgbd` and `bench accuracy`."""
    p.add_argument("--pixel-lookup", choices=("nearest", "floor"), default=VOXMAP_FUSION_DEFAULTS["pixel_lookup"],
                   help="the depth pixel a voxmap voxel reads (rgbd.pixel_lookup): 'nearest' or 'floor', "
                        "Open3D's choice, for a like-for-like comparison (default %(default)s)")
    p.add_argument("--mesh-max-jump-vox", type=float, default=VOXMAP_FUSION_DEFAULTS["mesh_max_jump_vox"],
                   help="voxmap's tsdf.mesh_max_jump_vox (0 = off) (default %(default)s)")


def system_options(**options) -> argparse.Namespace:
    """The option set VoxmapSystem / Open3dVbgSystem read, for callers without this benchmark's
    command line: the given options over VOXMAP_FUSION_DEFAULTS."""
    return argparse.Namespace(**{**VOXMAP_FUSION_DEFAULTS, **options})


# ------------------------------------------------------------------------------------------ data
def load_frames(path, n: int | None, stride: int = 1, depth_scale: float = 1000.0) -> list:
    """The first n (all when None) frames of an RGB-D folder, every `stride`-th, in memory."""
    from voxmap_ros.datasets.folder import RgbdFolder
    ds = RgbdFolder(path, depth_scale)
    if stride < 1:
        raise ValueError(f"--stride must be >= 1, got {stride}")
    idx = list(range(0, len(ds), stride))
    if n is not None:
        if n < 1:
            raise ValueError(f"--frames must be >= 1, got {n}")
        idx = idx[:n]
    frames = [ds[i] for i in idx]
    if any(f.depth is None for f in frames):
        raise ValueError(f"{path}: every frame needs a depth image")
    return frames


def parse_peers(text: str) -> list[str]:
    """'open3d,none' -> ['open3d_vbg', 'open3d_scalable'] (validated, de-duplicated, ordered)."""
    out = []
    for name in (s.strip() for s in text.split(",") if s.strip()):
        if name not in PEERS:
            raise ValueError(f"unknown peer '{name}'; expected some of {list(PEERS)}")
        for n in (("open3d_vbg", "open3d_scalable") if name == "open3d" else () if name == "none" else (name,)):
            if n not in out:
                out.append(n)
    return out


def _depth_scale(frame, default: float) -> float:
    return float(frame.depth_scale) if frame.depth_scale is not None else float(default)


# ------------------------------------------------------------------------------------------ voxmap
def make_config(args):
    from voxmap_ros.config import VoxmapConfig
    cfg = VoxmapConfig()
    cfg.set("map.voxel_size_m", args.voxel_size_m)
    cfg.set("tsdf.trunc_vox", args.trunc_vox)
    cfg.set("rgbd.max_range_m", args.max_range_m)
    cfg.set("rgbd.depth_scale", args.depth_scale)
    cfg.set("map.backend", args.backend)
    cfg.set("map.device", args.device)
    cfg.set("rgbd.pixel_lookup", args.pixel_lookup)
    cfg.set("tsdf.mesh_max_jump_vox", args.mesh_max_jump_vox)
    cfg.validate()
    return cfg


class VoxmapSystem(common.System):
    """voxmap's Mapper; the timed call is `Mapper.integrate(frame)` (on a CUDA map up to the end
    of the GPU work it queued)."""
    name = "voxmap"

    def __init__(self, args):
        self.cfg = make_config(args)
        self.every_frame = getattr(args, "summaries", "end") == "every-frame"

    def make(self):
        from voxmap_ros.core.mapper import Mapper
        return Mapper(self.cfg)

    def integrate(self, m, frame) -> None:
        m.integrate(frame)
        if self.every_frame:
            m.octree.flush_summaries()
        if m.device.type == "cuda":
            import torch
            torch.cuda.synchronize(m.device)

    def finish(self, m, want_mesh: bool):
        flush_ms = common.flush_deferred_ms(m)
        s = m.summary()
        o = m.octree
        attr_bytes = sum(t[0].nbytes for t in o.attrs.values())          # one brick's worth of voxel data
        used = int(s["bricks"]) * int(attr_bytes)
        res = {"voxels": int(s["voxels"]), "bricks": int(s["bricks"]), "map_bytes": int(s["map_bytes"]),
               "active_voxel_bytes": used, "used_bytes": used, "capacity_bytes": int(s["map_bytes"]),
               "backend": m.backend, "end_of_run_ms": flush_ms,
               "voxel_attributes": {k: str(v.dtype).replace("torch.", "") for k, v in o.attrs.items()}}
        mesh = None
        if want_mesh:
            with common.Timer() as t:
                mesh = m.extract_mesh()
            res.update(mesh_ms=t.ms, mesh_vertices=int(len(mesh.vertices)), mesh_triangles=int(len(mesh.triangles)))
        return res, mesh


# ------------------------------------------------------------------------------------------ Open3D
class Open3dVbgSystem(common.System):
    """Open3D tensor VoxelBlockGrid (CPU), attributes tsdf/weight/colour float32; the timed calls
    are `compute_unique_block_coordinates` + `integrate` (tensor images built beforehand)."""
    name = "open3d_vbg"

    def __init__(self, args, weight_threshold: float = 0.5):
        import open3d as o3d
        self.o3d, self.o3c = o3d, o3d.core
        self.dev = o3d.core.Device("CPU:0")
        self.args = args
        self.trunc = float(args.trunc_vox)
        self.depth_max = float(args.max_range_m)
        self.weight_threshold = float(weight_threshold)

    def prepare(self, frames) -> list:
        o3d, o3c, dev = self.o3d, self.o3c, self.dev
        out = []
        for f in frames:
            depth = o3d.t.geometry.Image(o3c.Tensor(np.ascontiguousarray(f.depth), device=dev))
            color = (o3d.t.geometry.Image(o3c.Tensor(np.ascontiguousarray(f.rgb), device=dev)) if f.rgb is not None
                     else None)
            K = o3c.Tensor(np.asarray(f.K, np.float64), o3c.float64, dev)
            E = o3c.Tensor(np.linalg.inv(np.asarray(f.T_W_S, np.float64)), o3c.float64, dev)   # T_C_W
            out.append((depth, color, K, E, _depth_scale(f, self.args.depth_scale)))
        return out

    def make(self):
        o3c = self.o3c
        return self.o3d.t.geometry.VoxelBlockGrid(
            ("tsdf", "weight", "color"), (o3c.float32, o3c.float32, o3c.float32), ((1), (1), (3)),
            float(self.args.voxel_size_m), int(self.args.block_resolution), int(self.args.block_count), self.dev)

    def integrate(self, vbg, item) -> None:
        depth, color, K, E, scale = item
        coords = vbg.compute_unique_block_coordinates(depth, K, E, scale, self.depth_max, self.trunc)
        if color is not None:
            vbg.integrate(coords, depth, color, K, K, E, scale, self.depth_max, self.trunc)
        else:
            vbg.integrate(coords, depth, K, E, scale, self.depth_max, self.trunc)

    def finish(self, vbg, want_mesh: bool):
        hm = vbg.hashmap()
        res3 = int(self.args.block_resolution) ** 3
        blocks = int(hm.size())
        per_block = sum(int(np.prod(list(t.shape[1:]))) * t.dtype.byte_size() for t in hm.value_tensors())
        res = {"voxels": blocks * res3, "blocks": blocks, "block_resolution": int(self.args.block_resolution),
               "map_bytes": blocks * per_block, "used_bytes": blocks * per_block,
               "capacity_bytes": int(hm.capacity()) * (per_block + 3 * 4),
               "block_capacity": int(hm.capacity()), "backend": "open3d-cpu"}
        mesh = None
        if want_mesh:
            with common.Timer() as t:
                tm = vbg.extract_triangle_mesh(weight_threshold=self.weight_threshold)
            mesh = _legacy_to_meshdata(tm.to_legacy())
            res.update(mesh_ms=t.ms, mesh_vertices=int(len(mesh.vertices)), mesh_triangles=int(len(mesh.triangles)),
                       mesh_weight_threshold=self.weight_threshold)
        return res, mesh


class Open3dScalableSystem(common.System):
    """Open3D legacy ScalableTSDFVolume, RGB8 colour, same truncation and depth cut-off; the
    timed calls are `RGBDImage.create_from_color_and_depth` + `integrate`. Its voxels / map_bytes
    are estimates (scalable_footprint), listed in "estimated_fields" and explained in the notes."""
    name = "open3d_scalable"

    def __init__(self, args):
        import open3d as o3d
        self.o3d = o3d
        self.args = args

    def prepare(self, frames) -> list:
        o3d = self.o3d
        out = []
        for f in frames:
            H, W = f.depth.shape
            K = np.asarray(f.K, np.float64)
            intr = o3d.camera.PinholeCameraIntrinsic(W, H, K[0, 0], K[1, 1], K[0, 2], K[1, 2])
            rgb = f.rgb if f.rgb is not None else np.zeros((H, W, 3), np.uint8)
            out.append((o3d.geometry.Image(np.ascontiguousarray(rgb)), o3d.geometry.Image(np.ascontiguousarray(f.depth)),
                        intr, np.linalg.inv(np.asarray(f.T_W_S, np.float64)), _depth_scale(f, self.args.depth_scale)))
        return out

    def make(self):
        integ = self.o3d.pipelines.integration
        vs = float(self.args.voxel_size_m)
        return integ.ScalableTSDFVolume(voxel_length=vs, sdf_trunc=float(self.args.trunc_vox) * vs,
                                        color_type=integ.TSDFVolumeColorType.RGB8,
                                        volume_unit_resolution=SCALABLE_UNIT_RESOLUTION,
                                        depth_sampling_stride=SCALABLE_DEPTH_STRIDE)

    def integrate(self, vol, item) -> None:
        color, depth, intr, E, scale = item
        rgbd = self.o3d.geometry.RGBDImage.create_from_color_and_depth(
            color, depth, depth_scale=scale, depth_trunc=float(self.args.max_range_m), convert_rgb_to_intensity=False)
        vol.integrate(rgbd, intr, E)

    def finish(self, vol, want_mesh: bool):
        res = {"backend": "open3d-legacy-cpu", "volume_unit_resolution": SCALABLE_UNIT_RESOLUTION,
               "depth_sampling_stride": SCALABLE_DEPTH_STRIDE}
        res.update(scalable_footprint(vol, float(self.args.voxel_size_m), SCALABLE_UNIT_RESOLUTION))
        mesh = None
        if want_mesh:
            with common.Timer() as t:
                lm = vol.extract_triangle_mesh()
            mesh = _legacy_to_meshdata(lm)
            res.update(mesh_ms=t.ms, mesh_vertices=int(len(mesh.vertices)), mesh_triangles=int(len(mesh.triangles)))
        ok, why = scalable_selftest()
        res["valid"] = ok and (mesh is None or len(mesh.triangles) > 0)
        if not res["valid"]:
            res["invalid_reason"] = why or "the fused volume produced an empty mesh"
            if not ok:
                # The units such a build allocates lie within centimetres of the camera, where every
                # voxel is far in front of the surface (tsdf +1): none is in the voxel point cloud.
                miss = ("; this Open3D build fails the self-test (see invalid_reason): the units it does allocate "
                        "hold only tsdf = +1 voxels, so this count misses them")
                res["voxels_note"] += miss
                res["map_bytes_note"] += miss
        return res, mesh


# ScalableTSDFVolume's defaults, passed explicitly so that the footprint below knows them.
SCALABLE_UNIT_RESOLUTION = 16          # voxels per volume-unit edge
SCALABLE_DEPTH_STRIDE = 4              # pixels between the depth samples that allocate units
# sizeof(open3d::geometry::TSDFVoxel) on x86-64 / aarch64: Voxel's Eigen::Vector3i grid index (12 B,
# padded to 16) and Eigen::Vector3d colour (24 B, doubles whatever the colour type) + float tsdf +
# float weight = 48 B. A 128^3 UniformTSDFVolume grew this process by 48.0 B per voxel (Open3D 0.20).
LEGACY_TSDF_VOXEL_BYTES = 48


def scalable_footprint(vol, voxel_length_m: float, unit_resolution: int) -> dict:
    """voxels / map_bytes of a legacy ScalableTSDFVolume, which its Python API does not report.
    What it does give is `extract_voxel_point_cloud()`: one point (the voxel centre) per voxel with
    weight != 0 and -0.98 <= tsdf < 0.98, i.e. the voxels near a surface ("voxels_near_surface",
    exact). Every volume unit is a dense unit_resolution^3 array of TSDFVoxel, so the units those
    points fall in ("volume_units") are allocated for sure: voxels = units x resolution^3 and
    map_bytes = voxels x LEGACY_TSDF_VOXEL_BYTES are estimates and lower bounds (units whose voxels
    are all at |tsdf| >= 0.98 or unobserved are not seen; the unit hash map is left out)."""
    pts = np.asarray(vol.extract_voxel_point_cloud().points, np.float64)
    unit_m = float(voxel_length_m) * int(unit_resolution)
    # Voxel centres lie (i + 0.5) voxels into their unit, far from a unit border: floor is exact.
    units = int(np.unique(np.floor(pts / unit_m).astype(np.int64), axis=0).shape[0]) if len(pts) else 0
    voxels = units * int(unit_resolution) ** 3
    return {
        "voxels": voxels, "volume_units": units, "voxels_near_surface": int(len(pts)),
        "map_bytes": voxels * LEGACY_TSDF_VOXEL_BYTES, "voxel_bytes": LEGACY_TSDF_VOXEL_BYTES,
        "estimated_fields": ["voxels", "map_bytes"],
        "voxels_note": (f"estimate, lower bound: {units} volume units x {unit_resolution}^3 voxels, counting only "
                        "the units that hold a voxel extract_voxel_point_cloud() returns (weight != 0 and "
                        "|tsdf| < 0.98; that count is voxels_near_surface)"),
        "map_bytes_note": (f"estimate, lower bound: voxels x {LEGACY_TSDF_VOXEL_BYTES} B (sizeof TSDFVoxel: "
                           "int3 grid index + double3 colour + float tsdf + float weight, 8-byte aligned); "
                           "the unit hash map is not counted"),
    }


def scalable_selftest() -> tuple[bool, str]:
    """Does this Open3D build's ScalableTSDFVolume fuse a plane 1 m in front of the camera?
    Some builds (seen with the 0.20.0 wheel) allocate volume units at depth / 1000 for the
    metric float depth of an RGBDImage, so only units within centimetres of the camera are ever
    integrated and surfaces farther away never appear; their timings then measure almost no work.
    Returns (works, explanation)."""
    import open3d as o3d
    integ = o3d.pipelines.integration
    W, H, f = 64, 48, 50.0
    intr = o3d.camera.PinholeCameraIntrinsic(W, H, f, f, W / 2, H / 2)

    def mesh_at(depth_mm: int) -> int:
        depth = np.full((H, W), depth_mm, np.uint16)
        rgbd = o3d.geometry.RGBDImage.create_from_color_and_depth(
            o3d.geometry.Image(np.full((H, W, 3), 128, np.uint8)), o3d.geometry.Image(depth),
            depth_scale=1000.0, depth_trunc=5.0, convert_rgb_to_intensity=False)
        vol = integ.ScalableTSDFVolume(0.02, 0.08, integ.TSDFVolumeColorType.RGB8, 16, 1)
        vol.integrate(rgbd, intr, np.eye(4))
        return len(vol.extract_triangle_mesh().triangles)

    far, near = mesh_at(1000), mesh_at(200)
    if far > 0:
        return True, ""
    return False, (f"Open3D {o3d.__version__} ScalableTSDFVolume fuses nothing for a plane at 1.0 m (0 triangles) "
                   f"but {near} triangles for one at 0.2 m: it allocates volume units at depth/1000, so "
                   "real surfaces are never integrated and its per-frame time measures almost no work")


def _legacy_to_meshdata(m):
    from voxmap_ros.types import MeshData
    v = np.asarray(m.vertices, np.float32)
    cols = (np.clip(np.asarray(m.vertex_colors), 0, 1) * 255).round().astype(np.uint8) if m.has_vertex_colors() \
        else np.zeros((len(v), 3), np.uint8)
    return MeshData(v, np.asarray(m.triangles, np.int64), cols)


# ------------------------------------------------------------------------------------------ checks
def mesh_crosscheck(mesh_a, mesh_b, tau_m: float, n_samples: int) -> dict:
    """Chamfer / F-score between two meshes (a = voxmap, b = peer): accuracy_m is a -> b,
    completeness_m is b -> a. Uses voxmap_ros.eval.metrics.mesh_metrics (exact point-to-triangle
    distances); falls back to a sampled KD-tree comparison if that module is unavailable."""
    if mesh_a is None or mesh_b is None or len(mesh_a.triangles) == 0 or len(mesh_b.triangles) == 0:
        return {"chamfer_m": None, "note": "a mesh is empty"}
    try:
        from voxmap_ros.eval.metrics import mesh_metrics
    except ImportError:
        return _kdtree_chamfer(mesh_a, mesh_b, tau_m, n_samples)
    r = mesh_metrics(mesh_a, mesh_b, tau_m=tau_m, n_samples=n_samples)
    r["method"] = "voxmap_ros.eval.metrics.mesh_metrics (point-to-triangle)"
    return r


def _kdtree_chamfer(mesh_a, mesh_b, tau_m: float, n: int) -> dict:
    import open3d as o3d

    def sample(m):
        lm = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(np.asarray(m.vertices, np.float64)),
                                       o3d.utility.Vector3iVector(np.asarray(m.triangles, np.int32)))
        return lm.sample_points_uniformly(n)

    pa, pb = sample(mesh_a), sample(mesh_b)
    dab = np.asarray(pa.compute_point_cloud_distance(pb))
    dba = np.asarray(pb.compute_point_cloud_distance(pa))
    p, r = float(np.mean(dab < tau_m)), float(np.mean(dba < tau_m))
    return {"accuracy_m": float(dab.mean()), "completeness_m": float(dba.mean()),
            "chamfer_m": float(dab.mean() + dba.mean()) / 2, "precision": p, "recall": r,
            "fscore": 0.0 if p + r == 0 else 2 * p * r / (p + r), "tau_m": tau_m, "n_samples": n,
            "method": "sampled points, nearest neighbour (KD-tree)"}


# ------------------------------------------------------------------------------------------ main
def run(args) -> dict:
    """Run the benchmark described by parsed `args`; returns the JSON payload."""
    peers = parse_peers(args.peers)
    if args.warmup < 0:
        raise ValueError(f"--warmup must be >= 0, got {args.warmup}")
    with common.Timer() as t_load:
        frames = load_frames(args.data, args.frames, args.stride, args.depth_scale)
    H, W = frames[0].depth.shape
    want_mesh = not args.no_mesh
    print(f"voxmap bench rgbd: {len(frames)} frames {W}x{H} from {args.data} loaded in {t_load.ms / 1000:.1f} s; "
          f"voxel {args.voxel_size_m} m, trunc {args.trunc_vox} vox, max range {args.max_range_m} m, "
          f"peers {peers or 'none'}", file=sys.stderr)
    from voxmap_ros.config import VoxmapConfig
    min_w = VoxmapConfig().tsdf.min_weight_mesh
    systems = [VoxmapSystem(args)]
    if "open3d_vbg" in peers:
        systems.append(Open3dVbgSystem(args, weight_threshold=min_w))
    if "open3d_scalable" in peers:
        systems.append(Open3dScalableSystem(args))
    load_start = common.load_average()
    states, ms, rep_medians = common.run_systems(systems, frames, args.warmup, interleave=not args.sequential,
                                                 progress=common.progress_printer("frame", args.quiet),
                                                 repeat=args.repeat)
    load_end = common.load_average()
    results, meshes = {}, {}
    for s in systems:
        results[s.name] = common.timing_stats(ms[s.name])
        results[s.name]["ms_per_frame"] = [round(x, 3) for x in ms[s.name]]
        results[s.name]["repeat_medians_ms"] = rep_medians[s.name]["medians"]
        results[s.name]["repeat_p95_ms"] = rep_medians[s.name]["p95s"]
        extra, meshes[s.name] = s.finish(states[s.name], want_mesh)
        results[s.name].update(extra)
    del states
    vm = results["voxmap"]["ms_per_frame_median"]
    ratios = {f"voxmap_over_{p}_ms": common.ratio(vm, results[p]["ms_per_frame_median"]) for p in peers}
    ratios.update({f"voxmap_over_{p}_ms_p95": common.ratio(results["voxmap"]["ms_per_frame_p95"],
                                                           results[p]["ms_per_frame_p95"]) for p in peers})
    cross = {}
    if want_mesh:
        for p in peers:
            cross[f"voxmap_vs_{p}"] = mesh_crosscheck(meshes["voxmap"], meshes[p], tau_m=float(args.voxel_size_m),
                                                      n_samples=int(args.mesh_samples))
    invalid = [p for p in peers if results[p].get("valid") is False]
    payload = {
        "command": common.command_line(), "equivalent_command": common.equivalent_command(args, "rgbd"),
        "benchmark": "rgbd", "machine": common.machine_info(), "code": common.code_fingerprint(),
        "data": str(args.data), "frames": len(frames), "image_size": [W, H], "stride": args.stride,
        "warmup_frames": int(min(args.warmup, len(frames))),
        "repeat": args.repeat,
        "schedule": "sequential" if args.sequential else "interleaved (systems take turns frame by frame)",
        "load_average_start": load_start, "load_average_end": load_end,
        "settings": {"voxel_size_m": args.voxel_size_m, "trunc_vox": args.trunc_vox,
                     "trunc_m": args.trunc_vox * args.voxel_size_m, "max_range_m": args.max_range_m,
                     "depth_scale": args.depth_scale, "open3d_block_resolution": args.block_resolution},
        "summaries": getattr(args, "summaries", "end"),
        "timed": {"voxmap": "Mapper.integrate(frame)" + (" + Octree.flush_summaries()"
                                                         if getattr(args, "summaries", "end") == "every-frame" else
                                                         "; end_of_run_ms: Octree.flush_summaries() once"),
                  "open3d_vbg": "compute_unique_block_coordinates + integrate",
                  "open3d_scalable": "RGBDImage.create_from_color_and_depth + integrate"},
        "results": results, "ratios": ratios, "mesh_crosscheck": cross,
        "invalid_peers": {p: results[p].get("invalid_reason") for p in invalid},
        "bar": {"voxmap_median_le_open3d_vbg_median":
                (vm <= results["open3d_vbg"]["ms_per_frame_median"]) if "open3d_vbg" in results else None},
    }
    return payload


def print_report(payload: dict, file=None) -> None:
    rows, notes = [], []
    for name, r in payload["results"].items():
        est = set(r.get("estimated_fields", ()))
        mib = (r["map_bytes"] / 2 ** 20) if r.get("map_bytes") is not None else None
        rows.append({"system": name, "median": r.get("ms_per_frame_median"), "p95": r.get("ms_per_frame_p95"),
                     "mean": r.get("ms_per_frame_mean"), "total": r.get("total_s"),
                     "voxels": _estimate_cell(r.get("voxels"), "voxels" in est),
                     "map": _estimate_cell(mib, "map_bytes" in est),
                     "used": (r["used_bytes"] / 2 ** 20) if r.get("used_bytes") else None,
                     "cap": (r["capacity_bytes"] / 2 ** 20) if r.get("capacity_bytes") else None,
                     "tris": r.get("mesh_triangles"), "backend": r.get("backend")})
        notes += [f"  ~ {name} {k}: {r[k + '_note']}" for k in ("voxels", "map_bytes")
                  if k in est and r.get(k + "_note")]
    common.print_table(rows, [("system", "system"), ("median", "ms/frame med"), ("p95", "p95"),
                              ("mean", "mean"), ("total", "total s"), ("voxels", "voxels"),
                              ("map", "map MiB"), ("used", "data MiB"), ("cap", "capacity MiB"),
                              ("tris", "mesh tris"), ("backend", "backend")],
                       title=f"RGB-D fusion, {payload['frames']} frames, voxel {payload['settings']['voxel_size_m']} m",
                       file=file)
    for line in notes:
        print(line, file=file)
    for k, v in payload["ratios"].items():
        if not k.endswith("_p95"):
            print(f"  {k:36s} {common.fmt(v)}", file=file)
    for p, why in payload.get("invalid_peers", {}).items():
        print(f"  WARNING {p} timing is not valid: {why}", file=file)
    for k, c in payload.get("mesh_crosscheck", {}).items():
        if c.get("chamfer_m") is None:
            print(f"  mesh {k}: {c.get('note')}", file=file)
            continue
        print(f"  mesh {k}: chamfer {c['chamfer_m'] * 1000:.2f} mm (voxmap->peer {c['accuracy_m'] * 1000:.2f} mm, "
              f"peer->voxmap {c['completeness_m'] * 1000:.2f} mm), F@{c['tau_m'] * 100:.0f}cm {c['fscore']:.3f}",
              file=file)


def _estimate_cell(value, estimated: bool):
    """A table cell: the value, prefixed with '~' when it is an estimate (see the notes under the table)."""
    return "~" + common.fmt(value) if estimated and value is not None else value


def main(args) -> int:
    return common.run_and_report(run, print_report, args)
