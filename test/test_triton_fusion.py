"""The Triton RGB-D voxel update (kernels/triton/fusion.py) against the torch reference, on the
CPU through Triton's interpreter (TRITON_INTERPRET=1): the same frames into two octrees, one
through integrate_rgbd_torch, one through integrate_rgbd_triton; the same bricks at the same
slots and the same voxel values up to float rounding. Scenes and tolerances are those of the
compiled kernels' test (test_native_fusion.py)."""
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch

os.environ.setdefault("TRITON_INTERPRET", "1")     # before the kernels are first loaded (lazily)

from test_native_fusion import K_SMALL, assert_maps_match, camera_poses, fusion_params, render_depth  # noqa: E402
from voxmap_ros.core import integrate, triton_fusion, triton_kernels  # noqa: E402
from voxmap_ros.core.octree import SparseVoxelOctree  # noqa: E402

pytestmark = [
    pytest.mark.skipif(not triton_kernels.available(), reason="triton is not installed"),
    pytest.mark.skipif(not triton_kernels.interpreting() and not torch.cuda.is_available(),
                       reason="TRITON_INTERPRET is set to something other than 1 and there is no GPU"),
]



def _dev():
    return "cpu" if triton_kernels.interpreting() else "cuda"


# The interpreter runs a 512-lane program in ~15 ms on a 2-core VM: a few small frames only.
@pytest.mark.parametrize("depth_weighting,frames,pixel_round", [(False, 2, 0.0), (True, 3, 0.5)])
def test_rgbd_triton_matches_torch(depth_weighting, frames, pixel_round):
    rng = np.random.default_rng(3)
    p = fusion_params(0.02, depth_weighting=depth_weighting, pixel_round=pixel_round)   # 0.0: floor(u)
    K = torch.from_numpy(K_SMALL)
    # Both maps on the kernel's device: the band, clearing and allocation steps are then the same
    # torch code on the same device, and only the voxel update differs.
    a = SparseVoxelOctree(0.02, initial_bricks=16, device=_dev())
    b = SparseVoxelOctree(0.02, initial_bricks=16, device=_dev())
    for i, T in enumerate(camera_poses(frames, rng)):
        depth, rgb = render_depth(T, rng)
        if i == 1:
            rgb = None                                    # depth-only frame: colour untouched
        args = [x.to(_dev()) if x is not None else None for x in (depth, rgb, K, torch.from_numpy(T))]
        sa = integrate.integrate_rgbd_torch(a, *args, p)
        sb = triton_fusion.integrate_rgbd_triton(b, *args, p)
        assert torch.equal(sa, sb), f"frame {i}: visited slots differ"
    assert a.num_bricks > 30
    assert (a.attrs["weight"][a.brick_alive] > 0).sum() > 3_000
    assert (a.attrs["occ"][a.brick_alive] != 0).sum() > 1_000
    assert_maps_match(_on_cpu(a), _on_cpu(b))


def _on_cpu(oc):
    """What assert_maps_match reads of an octree, on the CPU (the GPU run compares across devices)."""
    return SimpleNamespace(brick_alive=oc.brick_alive.cpu(), brick_coord=oc.brick_coord.cpu(),
                           attrs={k: v.cpu() for k, v in oc.attrs.items()})


def test_rgbd_triton_rejects_bad_input():
    oc = SparseVoxelOctree(0.02, initial_bricks=16, device=_dev())
    depth = torch.ones((4, 4), dtype=torch.float32, device=_dev())
    slots, _ = oc.allocate_bricks(torch.zeros((1, 3), dtype=torch.int64, device=_dev()))
    K, T, p = torch.eye(3, dtype=torch.float64), torch.eye(4, dtype=torch.float64), fusion_params(0.02)
    rgb = torch.zeros((4, 5, 3), dtype=torch.uint8, device=_dev())
    with pytest.raises(ValueError, match="rgb must be"):
        triton_fusion.rgbd_update_bricks_triton(oc, slots, depth, rgb, K, T, p)
    oc.attrs["tsdf"] = oc.attrs["tsdf"].float()
    with pytest.raises(ValueError, match="'tsdf' must be contiguous torch.float16"):
        triton_fusion.rgbd_update_bricks_triton(oc, slots, depth, None, K, T, p)


def test_mapper_triton_backend_matches_torch_backend():
    """map.backend 'triton' through Mapper.integrate: the same map as the torch backend (one frame)."""
    from voxmap_ros.config import VoxmapConfig
    from voxmap_ros.core.mapper import Mapper
    from voxmap_ros.types import Frame
    rng = np.random.default_rng(5)
    T = camera_poses(1, rng)[0]
    depth, rgb = render_depth(T, rng)
    frame = Frame(T_W_S=T, depth=depth.numpy(), rgb=rgb.numpy(), K=K_SMALL)
    maps = {}
    for be in ("torch", "triton"):
        cfg = VoxmapConfig()
        cfg.set("map.voxel_size_m", 0.02)
        cfg.set("map.backend", be)
        cfg.set("map.device", _dev())
        m = Mapper(cfg)
        assert m.backend == be
        m.integrate(frame)
        maps[be] = m
    assert maps["torch"].octree.num_bricks > 30
    assert_maps_match(_on_cpu(maps["torch"].octree), _on_cpu(maps["triton"].octree))


def test_mapper_triton_backend_on_cpu_needs_the_interpreter(monkeypatch):
    from voxmap_ros.config import VoxmapConfig
    from voxmap_ros.core.mapper import Mapper
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    cfg = VoxmapConfig()
    cfg.set("map.backend", "triton")
    with pytest.raises(ValueError, match="map.backend is 'triton'"):
        Mapper(cfg)
    cfg.set("map.backend", "auto")
    assert Mapper(cfg).backend in ("cpp", "torch")       # a CPU map never picks Triton by itself
