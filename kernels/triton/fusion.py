"""Triton kernel of the RGB-D voxel update (GPU; CPU tensors under TRITON_INTERPRET=1).

Loaded lazily by voxmap_ros/core/triton_fusion.py. One program per visited brick, one lane per
voxel (8^3 = 512): the arithmetic of voxmap_ros/core/integrate.rgbd_update_bricks in float32
(voxel centre -> camera frame -> nearest pixel, sdf = depth - z, weighted running means of TSDF
and colour, occupancy log-odds with clamping), every voxel independent, so no atomics. Storage
layout as in the octree: tsdf / weight / occ (capacity, 512) float16, color (capacity, 512, 3)
uint8, brick_coord (capacity, 3) int32, voxel l of a brick at (l % 8, l / 8 % 8, l / 64).
Divisions are tl.div_rn (IEEE, as torch on the CPU; a plain '/' is an approximate division on
NVIDIA GPUs) and the launcher turns FMA contraction off, so every step rounds as the reference's.
"""
import triton
import triton.language as tl


@triton.jit
def rgbd_update_kernel(slots_ptr, coord_ptr, depth_ptr, rgb_ptr, tsdf_ptr, weight_ptr, color_ptr, occ_ptr,
                       H, W, fx, fy, cx, cy,
                       r00, r01, r02, r10, r11, r12, r20, r21, r22, t0, t1, t2,
                       voxel, trunc, min_d, max_d, max_weight, l_hit, l_miss, l_min, l_max, pixel_round,
                       HAS_RGB: tl.constexpr, DEPTH_WEIGHTING: tl.constexpr, BRICK: tl.constexpr):
    VOXELS: tl.constexpr = BRICK * BRICK * BRICK
    s = tl.load(slots_ptr + tl.program_id(0)).to(tl.int64)
    lane = tl.arange(0, VOXELS)
    bx = tl.load(coord_ptr + s * 3 + 0).to(tl.float32) * BRICK
    by = tl.load(coord_ptr + s * 3 + 1).to(tl.float32) * BRICK
    bz = tl.load(coord_ptr + s * 3 + 2).to(tl.float32) * BRICK
    dx = (bx + (lane % BRICK).to(tl.float32) + 0.5) * voxel - t0
    dy = (by + ((lane // BRICK) % BRICK).to(tl.float32) + 0.5) * voxel - t1
    dz = (bz + (lane // (BRICK * BRICK)).to(tl.float32) + 0.5) * voxel - t2
    # Camera coordinates (p - t) R: column j of R_W_C.
    x = dx * r00 + dy * r10 + dz * r20
    y = dx * r01 + dy * r11 + dz * r21
    z = dx * r02 + dy * r12 + dz * r22
    front = z > 1e-6
    zc = tl.where(front, z, 1.0)
    u = tl.floor(tl.div_rn(fx * x, zc) + cx + pixel_round)
    v = tl.floor(tl.div_rn(fy * y, zc) + cy + pixel_round)
    inside = front & (u >= 0) & (u < W) & (v >= 0) & (v < H)
    pix = tl.where(inside, v, 0.0).to(tl.int64) * W + tl.where(inside, u, 0.0).to(tl.int64)
    d = tl.load(depth_ptr + pix, mask=inside, other=0.0)
    ok = inside & (d - d == 0.0) & (d >= min_d) & (d <= max_d)          # d - d: NaN for inf / NaN
    sdf = d - z
    ok = ok & (sdf >= -trunc)
    obs = tl.minimum(tl.maximum(tl.div_rn(sdf, trunc), -1.0), 1.0)
    if DEPTH_WEIGHTING:
        dm = tl.maximum(d, 1.0)
        w_obs = tl.div_rn(tl.full((VOXELS,), 1.0, tl.float32), dm * dm)
    else:
        w_obs = tl.full((VOXELS,), 1.0, tl.float32)
    at = s * VOXELS + lane
    w_old = tl.load(weight_ptr + at).to(tl.float32)
    t_old = tl.load(tsdf_ptr + at).to(tl.float32)
    w_sum = w_old + w_obs
    t_new = tl.div_rn(t_old * w_old + obs * w_obs, w_sum)
    tl.store(tsdf_ptr + at, t_new.to(tl.float16), mask=ok)
    tl.store(weight_ptr + at, tl.minimum(w_sum, max_weight).to(tl.float16), mask=ok)
    if HAS_RGB:
        near = ok & (tl.abs(sdf) < trunc)
        for k in tl.static_range(3):
            c_obs = tl.load(rgb_ptr + pix * 3 + k, mask=near, other=0).to(tl.float32)
            c_old = tl.load(color_ptr + at * 3 + k).to(tl.float32)
            c_new = tl.floor(tl.div_rn(c_old * w_old + c_obs * w_obs, w_sum) + 0.5)
            c_new = tl.minimum(tl.maximum(c_new, 0.0), 255.0)
            tl.store(color_ptr + at * 3 + k, c_new.to(tl.uint8), mask=near)
    half = 0.5 * voxel
    delta = tl.where(tl.abs(sdf) <= half, l_hit, tl.where(sdf > voxel, l_miss, 0.0))
    upd = ok & (delta != 0.0)
    o_old = tl.load(occ_ptr + at).to(tl.float32)
    o_new = tl.minimum(tl.maximum(o_old + delta, l_min), l_max)
    tl.store(occ_ptr + at, o_new.to(tl.float16), mask=upd)
