"""The Triton rasterizer (kernels/triton/raster.py) against the pure-torch reference, on the CPU
through Triton's interpreter (TRITON_INTERPRET=1): forward images, ids and gradients. The scenes
are tiny (tens of cells, 16 x 12 pixels): the interpreter runs every kernel op in numpy."""
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("TRITON_INTERPRET", "1")     # before the kernels are first loaded (lazily)

from conftest import far_scene  # noqa: E402
from voxmap_ros.render import VoxelSet, make_camera, render, triton_raster  # noqa: E402
from voxmap_ros.render.voxels import voxels_from_sdf  # noqa: E402
from voxmap_ros.sim import look_at  # noqa: E402

pytestmark = [
    pytest.mark.skipif(not triton_raster.available(), reason="triton is not installed"),
    pytest.mark.skipif(not triton_raster.interpreting() and not torch.cuda.is_available(),
                       reason="TRITON_INTERPRET is set to something other than 1 and there is no GPU"),
]

VOXEL_M = 0.05
ACC_TOL = 2e-4          # float32 kernel vs float64 reference
GRAD_RTOL = 2e-3        # relative to the largest gradient


def _dev():
    return "cpu" if triton_raster.interpreting() else "cuda"


def _K(w, h, f):
    return np.array([[f, 0, (w - 1) / 2], [0, f, (h - 1) / 2], [0, 0, 1]], np.float64)


def _compare(vs, cam, field, sharpness=None):
    outs = {}
    for be in ("reference", "triton"):
        v = vs.values.clone().to(_dev() if be == "triton" else "cpu").requires_grad_()
        c = vs.colors.clone().to(v.device).requires_grad_()
        x = VoxelSet(vs.coords.to(v.device), vs.level.to(v.device), v, c, vs.voxel_size_m, vs.origin_m)
        o = render(x, cam, field, sharpness=sharpness, samples=2, backend=be)
        H, W = o.alpha.shape
        wa = torch.linspace(0.5, 1.5, H * W, dtype=o.alpha.dtype, device=v.device).reshape(H, W)
        rgbw = torch.tensor([1.0, -2.0, 3.0], dtype=o.color.dtype, device=v.device)
        loss = (o.alpha * wa).sum() + 0.3 * o.depth_acc.sum() + (o.color * rgbw).sum()
        gv, gc = torch.autograd.grad(loss, (v, c))
        outs[be] = (o, gv.cpu(), gc.cpu())
    (a, gva, gca), (b, gvb, gcb) = outs["reference"], outs["triton"]
    assert b.backend == "triton"
    for k in ("alpha", "depth_acc", "color"):
        d = float((getattr(a, k) - getattr(b, k).cpu().double()).abs().max())
        assert d < ACC_TOL * max(1.0, float(getattr(a, k).abs().max())), (k, d)
    op = a.alpha > 0.5
    if bool(op.any()):
        assert float((a.depth - b.depth.cpu().double()).abs()[op].max()) < 1e-4
    assert bool((a.voxel_id == b.voxel_id.cpu()).all())
    for ga, gb in ((gva, gvb), (gca, gcb)):
        scale = float(ga.abs().max())
        assert scale > 0
        assert float((ga - gb.double()).abs().max()) < GRAD_RTOL * scale
    return a


def test_triton_image_does_not_depend_on_the_distance_from_the_world_origin():
    """As on the CPU: drawn in camera-centred coordinates, 100 km out equals near the origin."""
    near, far = (render(*far_scene(off), "density", backend="triton") for off in (0.0, 1e5))
    assert float(near.alpha.max()) > 0.5
    assert float((near.alpha - far.alpha).abs().max()) < 1e-5
    assert torch.equal(near.voxel_id.cpu(), far.voxel_id.cpu())


def test_triton_matches_reference_sdf_plane():
    n = torch.tensor([0.2, -0.1, -1.0], dtype=torch.float64)
    n = n / n.norm()
    vs = voxels_from_sdf(lambda p: p @ n + 0.5, (-0.1, -0.1, 0.4), (0.1, 0.1, 0.6), VOXEL_M, 0.06)
    assert 10 <= len(vs) <= 64
    vs.colors = torch.rand(len(vs), 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    cam = make_camera(_K(16, 12, 30.0), np.eye(4), 16, 12, 0.1, 10.0)
    a = _compare(vs, cam, "sdf", sharpness=12.0 / VOXEL_M)
    assert float(a.alpha.max()) > 0.99


def test_triton_matches_reference_density_cloud_many_octants():
    g = torch.Generator().manual_seed(2)
    coords = torch.unique(torch.randint(-2, 2, (24, 3), generator=g), dim=0)
    n = coords.shape[0]
    vs = VoxelSet(coords, torch.zeros(n, dtype=torch.int64), torch.rand(n, 8, dtype=torch.float64, generator=g) * 6,
                  torch.rand(n, 3, dtype=torch.float64, generator=g), 0.1)
    cam = make_camera(_K(16, 12, 6.0), look_at((0.03, 0.02, 0.45), (0.0, 0.0, 0.0)), 16, 12, 0.02, 10.0)
    assert len(set(cam.octants().reshape(-1).tolist())) >= 2
    a = _compare(vs, cam, "density")
    assert float(a.alpha.max()) > 0.3


def test_triton_front_to_back_order_from_both_sides():
    coords = torch.tensor([[0, 0, 0], [1, 0, 0]])
    colors = torch.tensor([[1.0, 0, 0], [0, 0, 1.0]], dtype=torch.float64)
    vs = VoxelSet(coords, torch.zeros(2, dtype=torch.int64), torch.full((2, 8), 2000.0, dtype=torch.float64), colors,
                  0.1, torch.tensor([0.0, -0.05, -0.05], dtype=torch.float64))
    for eye_x, want in ((-0.5, (1.0, 0.0, 0.0)), (0.7, (0.0, 0.0, 1.0))):
        cam = make_camera(_K(9, 7, 8.0), look_at((eye_x, 0.01, 0.02), (0.1, 0.0, 0.0)), 9, 7, 0.05, 10.0)
        x = VoxelSet(vs.coords.to(_dev()), vs.level.to(_dev()), vs.values.to(_dev()), vs.colors.to(_dev()), 0.1,
                     vs.origin_m)
        out = render(x, cam, "density", backend="triton")
        assert torch.allclose(out.color[3, 4].cpu().double(), torch.tensor(want, dtype=torch.float64), atol=1e-3)
