"""Reference rasterizer in pure torch (CPU or CUDA): the test oracle for the fast paths.

For every (tile, octant) group of `binning.bin_cells` the pixels of that tile whose rays lie in
that octant walk the group's front-to-back cell list (vectorised over pixels x cells):

  for each cell i (in order), if the ray meets it in [t_in, t_out] (slab test, clipped to
  [near, far]) and the ray is still alive (transmittance before the cell >= t_min):
      split [t_in, t_out] into K equal sub-segments at t_0..t_K; f_j = trilinear field at x(t_j);
      optical depth of sub-segment j:
          field "sdf":     tau_j = max(0, softplus(-x_{j+1}) - softplus(-x_j)),  x = max(s f, -60)
          field "density": tau_j = (f_j + f_{j+1}) / 2 * (t_{j+1} - t_j) * |d|
      with S the optical depth accumulated so far, the sub-segment's weight is
          w_j = exp(-S) - exp(-(S + tau_j))          (= T alpha, alpha = 1 - exp(-tau_j))
      and it adds w_j to alpha, w_j * (t_j + t_{j+1}) / 2 to depth, w_j * colour_i to colour and
      w_j * normal_i to normal.
  The front-most voxel id is the first cell after which 1 - exp(-S) >= 0.5.

Returns the raw accumulations; `render()` normalises depth by alpha. Autograd gives the gradients
w.r.t. values and colours (normals are detached). Every fast path implements exactly this.
"""
from __future__ import annotations

import math

import torch

from .binning import TILE, Bins, bin_cells
from .camera import Camera
from .voxels import CORNER_OFFSETS, SDF_X_MIN, VoxelSet, normals

DIR_EPS = 1e-12            # direction components smaller than this are treated as +DIR_EPS in the slab test
SUB_TAU_MAX = 1e4          # optical depth of one sub-segment is capped here (exp(-1e4) == 0)


def slab(o: torch.Tensor, d: torch.Tensor, lo: torch.Tensor, size: torch.Tensor, near: float, far: float):
    """Ray / box intersection. o (3,), d (P, 3), lo (L, 3), size (L,) -> (t_in, t_out) (P, L); one
    float dtype and device throughout."""
    dd = torch.where(d.abs() < DIR_EPS, torch.full_like(d, DIR_EPS), d)
    inv = 1.0 / dd
    a = (lo[None] - o) * inv[:, None, :]                               # (P, L, 3)
    b = (lo[None] + size[None, :, None] - o) * inv[:, None, :]
    t_in = torch.minimum(a, b).amax(-1).clamp_min(near)
    t_out = torch.maximum(a, b).amin(-1).clamp_max(far)
    return t_in, t_out


def trilinear_weights(q: torch.Tensor) -> torch.Tensor:
    """Local coordinates q (..., 3) in [0, 1] -> corner weights (..., 8), corner c = i + 2j + 4k;
    in q's float dtype and on its device."""
    off = CORNER_OFFSETS.to(q.device, q.dtype)
    return torch.where(off.bool(), q[..., None, :], 1 - q[..., None, :]).prod(-1)


def sub_tau(f: torch.Tensor, t: torch.Tensor, dnorm: torch.Tensor, field: str, sharpness: float) -> torch.Tensor:
    """Optical depth (..., K) of the K sub-segments from field values f (..., K+1) at t (..., K+1),
    ray direction norms dnorm broadcastable to (..., K); one float dtype and device throughout."""
    if field == "sdf":
        sp = torch.nn.functional.softplus(-(sharpness * f).clamp_min(-SDF_X_MIN))
        return (sp[..., 1:] - sp[..., :-1]).clamp_min(0)
    # Clamped so that sums of opaque segments stay finite (densities near float32's max once gave
    # inf - inf = NaN downstream); exp(-SUB_TAU_MAX) is 0 in every float type used here.
    # 0.5 a + 0.5 b rounds exactly as 0.5 (a + b) but cannot overflow.
    return ((0.5 * f[..., 1:] + 0.5 * f[..., :-1]) * (t[..., 1:] - t[..., :-1]) * dnorm).clamp_max(SUB_TAU_MAX)


def render_reference(v: VoxelSet, cam: Camera, field: str, sharpness: float, samples: int, t_min: float,
                     bins: Bins | None = None) -> dict[str, torch.Tensor]:
    """Raw accumulations {alpha (H, W), depth (H, W) (sum of w t), color (H, W, 3), normal (H, W, 3),
    index (H, W) int64 cell index or -1} in the dtype of v.values, on its device."""
    dev, dt = v.device, v.values.dtype
    H, W = cam.height, cam.width
    bins = bins if bins is not None else bin_cells(v, cam)
    lo, size = v.cell_lo_m(), v.cell_size_m()
    nrm = normals(v, field)
    o = cam.origin.to(dev, dt)
    dirs = cam.directions(dev, dt).reshape(-1, 3)
    pix_oct = bins.pixel_octant.reshape(-1)
    rect = bins.rect
    s_stop = -math.log(t_min)
    K = int(samples)
    frac = torch.arange(K + 1, device=dev, dtype=dt) / K
    pix_l, a_l, d_l, c_l, n_l, i_l = [], [], [], [], [], []
    for g in range(bins.group_tile.numel()):
        tile, octant = int(bins.group_tile[g]), int(bins.group_octant[g])
        ty, tx = divmod(tile, bins.tiles_x)
        us = torch.arange(tx * TILE, min((tx + 1) * TILE, W), device=dev)
        vs = torch.arange(ty * TILE, min((ty + 1) * TILE, H), device=dev)
        pix = (vs[:, None] * W + us[None]).reshape(-1)
        pix = pix[pix_oct[pix] == octant]
        if pix.numel() == 0:
            continue
        cells = bins.entries[int(bins.group_start[g]):int(bins.group_end[g])]
        pu, pv = pix % W, pix // W
        r = rect[cells]
        inside = ((pu[:, None] >= r[None, :, 0]) & (pu[:, None] <= r[None, :, 1]) &
                  (pv[:, None] >= r[None, :, 2]) & (pv[:, None] <= r[None, :, 3]))
        d = dirs[pix]
        t_in, t_out = slab(o, d, lo[cells], size[cells], cam.near_m, cam.far_m)
        hit = inside & (t_out > t_in)
        t_out = torch.where(hit, t_out, t_in)
        t = t_in[..., None] + (t_out - t_in)[..., None] * frac                 # (P, L, K+1)
        x = o + t[..., None] * d[:, None, None, :]                               # (P, L, K+1, 3)
        q = ((x - lo[cells][None, :, None, :]) / size[cells][None, :, None, None]).clamp(0, 1)
        f = (trilinear_weights(q) * v.values[cells][None, :, None, :]).sum(-1)  # (P, L, K+1)
        tau = sub_tau(f, t, d.norm(dim=1)[:, None, None], field, sharpness) * hit[..., None]
        S_incl = torch.cumsum(tau.reshape(tau.shape[0], -1), 1).reshape(tau.shape)    # (P, L, K)
        S_excl = S_incl - tau
        S_cell_before = S_excl[..., 0]
        alive = (S_cell_before <= s_stop) & hit
        w = (torch.exp(-S_excl) - torch.exp(-S_incl)) * alive[..., None]
        tm = 0.5 * (t[..., 1:] + t[..., :-1])
        wc = w.sum(-1)                                                           # (P, L)
        pix_l.append(pix)
        a_l.append(w.sum((1, 2)))
        d_l.append((w * tm).sum((1, 2)))
        c_l.append(wc @ v.colors[cells])
        n_l.append(wc.detach() @ nrm[cells])
        front = alive & (S_incl[..., -1] >= math.log(2.0))
        first = torch.where(front.any(1), front.float().argmax(1), torch.full_like(pix, -1))
        i_l.append(torch.where(first >= 0, cells[first.clamp_min(0)], first))
    n = H * W
    A = torch.zeros(n, dtype=dt, device=dev)
    D = torch.zeros(n, dtype=dt, device=dev)
    C = torch.zeros((n, 3), dtype=dt, device=dev)
    N = torch.zeros((n, 3), dtype=dt, device=dev)
    I = torch.full((n,), -1, dtype=torch.int64, device=dev)
    if pix_l:
        pix = torch.cat(pix_l)
        A = A.index_put((pix,), torch.cat(a_l))
        D = D.index_put((pix,), torch.cat(d_l))
        C = C.index_put((pix,), torch.cat(c_l))
        N = N.index_put((pix,), torch.cat(n_l))
        I = I.index_put((pix,), torch.cat(i_l))
    else:
        # Nothing drawn: still outputs of the cells' values and colours (zero gradients), as the
        # compiled backend gives, so a training loop need not special-case an empty view.
        none = torch.zeros(0, dtype=torch.int64, device=dev)
        flat = v.values.reshape(-1)[:0].to(dt)
        A, D = A.index_put((none,), flat), D.index_put((none,), flat)
        C = C.index_put((none,), v.colors.reshape(-1, 3)[:0].to(dt))
    return {"alpha": A.reshape(H, W), "depth": D.reshape(H, W), "color": C.reshape(H, W, 3),
            "normal": N.reshape(H, W, 3), "index": I.reshape(H, W)}


def pack_output_grads(gA, gD, gC, rows: int, device=None) -> torch.Tensor:
    """Incoming gradients of (alpha (P,), depth (P,), colour (P, 3)), any float dtype and device,
    as one (rows, 5) float32 tensor on `device` (None: CPU) [alpha, depth, r, g, b] (zeros where a
    gradient is None): the layout the fast paths' backward kernels read."""
    g = torch.zeros((rows, 5), dtype=torch.float32, device=device)
    if gA is not None:
        g[:, 0] = gA.reshape(-1).float()
    if gD is not None:
        g[:, 1] = gD.reshape(-1).float()
    if gC is not None:
        g[:, 2:5] = gC.reshape(-1, 3).float()
    return g
