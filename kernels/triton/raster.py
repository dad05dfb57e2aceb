"""Triton kernels of the sparse-voxel rasterizer: forward and backward (GPU; CPU tensors under
TRITON_INTERPRET=1). Loaded lazily by voxmap_ros/render/triton_raster.py, which bins and orders
the cells with torch (voxmap_ros/render/binning.py) and launches one program per (tile, octant)
group: the program's lanes are the tile's 16 x 16 pixels (those of other octants masked off); it
walks the group's front-to-back cell list once, every lane compositing the cells its ray meets,
and stops when every lane's transmittance is below t_min. The per-ray arithmetic is that of
voxmap_ros/render/reference.py (slab test, K sub-segments, trilinear corners, NeuS SDF mapping or
trapezoid density, w = T_before - T_after), in float32.
"""
import triton
import triton.language as tl


@triton.jit
def _trilinear(values_ptr, c, qx, qy, qz):
    """Field (BLOCK,) at local coordinates q of cell c, and the corner weights (BLOCK, 8)."""
    corners = tl.arange(0, 8)
    cx = (corners & 1).to(tl.float32)
    cy = ((corners >> 1) & 1).to(tl.float32)
    cz = ((corners >> 2) & 1).to(tl.float32)
    wx = cx[None, :] * qx[:, None] + (1.0 - cx[None, :]) * (1.0 - qx[:, None])
    wy = cy[None, :] * qy[:, None] + (1.0 - cy[None, :]) * (1.0 - qy[:, None])
    wz = cz[None, :] * qz[:, None] + (1.0 - cz[None, :]) * (1.0 - qz[:, None])
    w = wx * wy * wz
    vals = tl.load(values_ptr + c * 8 + corners)
    return tl.sum(w * vals[None, :], axis=1), w


@triton.jit
def _point(ox, oy, oz, dx, dy, dz, t, lo0, lo1, lo2, inv_sz):
    qx = tl.minimum(tl.maximum((ox + t * dx - lo0) * inv_sz, 0.0), 1.0)
    qy = tl.minimum(tl.maximum((oy + t * dy - lo1) * inv_sz, 0.0), 1.0)
    qz = tl.minimum(tl.maximum((oz + t * dz - lo2) * inv_sz, 0.0), 1.0)
    return qx, qy, qz


@triton.jit
def _g(f, sharp, x_min):
    # NeuS transmittance factor: 1 + exp(-x), x = max(s f, -x_min)
    return 1.0 + tl.exp(-tl.maximum(sharp * f, -x_min))


@triton.jit
def raster_kernel(group_tile, group_oct, group_start, group_end, entries, pix_oct,
                  lo_ptr, size_ptr, values_ptr, colors_ptr, normals_ptr, rect_ptr,
                  out_acc, out_index, grad_acc, fwd_acc, grad_values, grad_colors,
                  W, H, tiles_x,
                  ox, oy, oz, m00, m01, m02, m10, m11, m12, m20, m21, m22,
                  near, far, sharp, x_min, T_stop, dir_eps,
                  FIELD: tl.constexpr, K: tl.constexpr, TILE: tl.constexpr, BACKWARD: tl.constexpr):
    BLOCK: tl.constexpr = TILE * TILE
    g = tl.program_id(0)
    tile = tl.load(group_tile + g)
    octant = tl.load(group_oct + g)
    start = tl.load(group_start + g)
    end = tl.load(group_end + g)
    ty = tile // tiles_x
    tx = tile % tiles_x
    lane = tl.arange(0, BLOCK)
    u = tx * TILE + lane % TILE
    v = ty * TILE + lane // TILE
    valid = (u < W) & (v < H)
    pix = v * W + u
    po = tl.load(pix_oct + pix, mask=valid, other=-1)
    mine = valid & (po == octant)
    uf = u.to(tl.float32)
    vf = v.to(tl.float32)
    dx = m00 * uf + m01 * vf + m02
    dy = m10 * uf + m11 * vf + m12
    dz = m20 * uf + m21 * vf + m22
    dn = tl.sqrt(dx * dx + dy * dy + dz * dz)
    ix = 1.0 / tl.where(tl.abs(dx) < dir_eps, dir_eps, dx)
    iy = 1.0 / tl.where(tl.abs(dy) < dir_eps, dir_eps, dy)
    iz = 1.0 / tl.where(tl.abs(dz) < dir_eps, dir_eps, dz)
    zero = tl.zeros([BLOCK], dtype=tl.float32)
    T = zero + 1.0
    A = zero
    D = zero
    C0 = zero
    C1 = zero
    C2 = zero
    N0 = zero
    N1 = zero
    N2 = zero
    first = tl.full([BLOCK], -1, tl.int64)
    if BACKWARD:
        gA = tl.load(grad_acc + pix * 5 + 0, mask=mine, other=0.0)
        gD = tl.load(grad_acc + pix * 5 + 1, mask=mine, other=0.0)
        gC0 = tl.load(grad_acc + pix * 5 + 2, mask=mine, other=0.0)
        gC1 = tl.load(grad_acc + pix * 5 + 3, mask=mine, other=0.0)
        gC2 = tl.load(grad_acc + pix * 5 + 4, mask=mine, other=0.0)
        R_total = (gA * tl.load(fwd_acc + pix * 8 + 0, mask=mine, other=0.0)
                   + gD * tl.load(fwd_acc + pix * 8 + 1, mask=mine, other=0.0)
                   + gC0 * tl.load(fwd_acc + pix * 8 + 2, mask=mine, other=0.0)
                   + gC1 * tl.load(fwd_acc + pix * 8 + 3, mask=mine, other=0.0)
                   + gC2 * tl.load(fwd_acc + pix * 8 + 4, mask=mine, other=0.0))
        R_upto = zero
    live = mine
    n_live = tl.sum(live.to(tl.int32), axis=0)
    e = start
    while (e < end) & (n_live > 0):
        c = tl.load(entries + e)
        lo0 = tl.load(lo_ptr + c * 3 + 0)
        lo1 = tl.load(lo_ptr + c * 3 + 1)
        lo2 = tl.load(lo_ptr + c * 3 + 2)
        sz = tl.load(size_ptr + c)
        inv_sz = 1.0 / sz
        r0 = tl.load(rect_ptr + c * 4 + 0)
        r1 = tl.load(rect_ptr + c * 4 + 1)
        r2 = tl.load(rect_ptr + c * 4 + 2)
        r3 = tl.load(rect_ptr + c * 4 + 3)
        inside = (u >= r0) & (u <= r1) & (v >= r2) & (v <= r3)
        ax = (lo0 - ox) * ix
        bx = (lo0 + sz - ox) * ix
        ay = (lo1 - oy) * iy
        by = (lo1 + sz - oy) * iy
        az = (lo2 - oz) * iz
        bz = (lo2 + sz - oz) * iz
        tin = tl.maximum(tl.maximum(tl.minimum(ax, bx), tl.minimum(ay, by)), tl.minimum(az, bz))
        tout = tl.minimum(tl.minimum(tl.maximum(ax, bx), tl.maximum(ay, by)), tl.maximum(az, bz))
        tin = tl.maximum(tin, near)
        tout = tl.minimum(tout, far)
        act = live & inside & (tout > tin)
        t0 = tl.where(act, tin, 0.0)
        span = tl.where(act, tout - tin, 0.0)
        qx, qy, qz = _point(ox, oy, oz, dx, dy, dz, t0, lo0, lo1, lo2, inv_sz)
        f_prev, w_prev = _trilinear(values_ptr, c, qx, qy, qz)
        g_prev = _g(f_prev, sharp, x_min)
        t_prev = t0
        Tc = T
        Ac = zero
        Dc = zero
        wsum = zero
        col0 = tl.load(colors_ptr + c * 3 + 0)
        col1 = tl.load(colors_ptr + c * 3 + 1)
        col2 = tl.load(colors_ptr + c * 3 + 2)
        if BACKWARD:
            gq_col = gC0 * col0 + gC1 * col1 + gC2 * col2
            gv = tl.zeros([BLOCK, 8], dtype=tl.float32)
        for j in tl.static_range(K):
            t_next = t0 + span * ((j + 1) * (1.0 / K))
            qx, qy, qz = _point(ox, oy, oz, dx, dy, dz, t_next, lo0, lo1, lo2, inv_sz)
            f_next, w_next = _trilinear(values_ptr, c, qx, qy, qz)
            if FIELD == 0:
                g_next = _g(f_next, sharp, x_min)
                ratio = g_prev / g_next
                Ta = Tc * tl.minimum(ratio, 1.0)
                if BACKWARD:
                    pos = ratio <= 1.0
                    da = tl.where(pos & (sharp * f_prev >= -x_min), sharp * (g_prev - 1.0) / g_prev, 0.0)
                    db = tl.where(pos & (sharp * f_next >= -x_min), -sharp * (g_next - 1.0) / g_next, 0.0)
                g_prev = g_next
            else:
                dt = t_next - t_prev
                Ta = Tc * tl.exp(-(0.5 * (f_prev + f_next) * dt * dn))
                if BACKWARD:
                    da = 0.5 * dt * dn
                    db = 0.5 * dt * dn
            w = Tc - Ta
            tm = 0.5 * (t_prev + t_next)
            if BACKWARD:
                gq = gA + gD * tm + gq_col
                R_upto += tl.where(act, w * gq, 0.0)
                dL = tl.where(act, Ta * gq - (R_total - R_upto), 0.0)
                gv += (dL * da)[:, None] * w_prev + (dL * db)[:, None] * w_next
            Ac += w
            Dc += w * tm
            wsum += w
            Tc = Ta
            t_prev = t_next
            f_prev = f_next
            w_prev = w_next
        T = tl.where(act, Tc, T)
        if BACKWARD:
            tl.atomic_add(grad_values + c * 8 + tl.arange(0, 8), tl.sum(gv, axis=0))
            ws = tl.where(act, wsum, 0.0)
            tl.atomic_add(grad_colors + c * 3 + 0, tl.sum(ws * gC0, axis=0))
            tl.atomic_add(grad_colors + c * 3 + 1, tl.sum(ws * gC1, axis=0))
            tl.atomic_add(grad_colors + c * 3 + 2, tl.sum(ws * gC2, axis=0))
        else:
            A += tl.where(act, Ac, 0.0)
            D += tl.where(act, Dc, 0.0)
            C0 += tl.where(act, wsum * col0, 0.0)
            C1 += tl.where(act, wsum * col1, 0.0)
            C2 += tl.where(act, wsum * col2, 0.0)
            N0 += tl.where(act, wsum * tl.load(normals_ptr + c * 3 + 0), 0.0)
            N1 += tl.where(act, wsum * tl.load(normals_ptr + c * 3 + 1), 0.0)
            N2 += tl.where(act, wsum * tl.load(normals_ptr + c * 3 + 2), 0.0)
            first = tl.where(act & (first < 0) & (T <= 0.5), c.to(tl.int64), first)
        live = live & ~(act & (T < T_stop))
        n_live = tl.sum(live.to(tl.int32), axis=0)
        e += 1
    if not BACKWARD:
        tl.store(out_acc + pix * 8 + 0, A, mask=mine)
        tl.store(out_acc + pix * 8 + 1, D, mask=mine)
        tl.store(out_acc + pix * 8 + 2, C0, mask=mine)
        tl.store(out_acc + pix * 8 + 3, C1, mask=mine)
        tl.store(out_acc + pix * 8 + 4, C2, mask=mine)
        tl.store(out_acc + pix * 8 + 5, N0, mask=mine)
        tl.store(out_acc + pix * 8 + 6, N1, mask=mine)
        tl.store(out_acc + pix * 8 + 7, N2, mask=mine)
        tl.store(out_index + pix, first, mask=mine)
