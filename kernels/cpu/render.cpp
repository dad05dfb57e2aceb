// Sparse-voxel rasterizer, CPU forward and backward (OpenMP): the compiled twin of
// voxmap_ros/render/reference.py. Same binning (16x16 tiles, one front-to-back list per ray octant
// present in a tile, sorted by mirrored Morton keys), same per-ray arithmetic (slab test, K
// sub-segments, trilinear field, NeuS SDF->density or trapezoid density, weights
// w = T_before - T_after, a ray stops once T < t_min), in float32.
//
// Layout: the cells are first packed into one 96-byte record each (corner values, colour, normal,
// world box, pixel rectangle) so that drawing touches one record per list entry. A tile is drawn
// cell by cell (front to back): each cell is splatted over the live pixels of its rectangle, each
// pixel keeping its running transmittance and sums, so a cell costs only the pixels it can cover.
// Python side: voxmap_ros/render/cpu_fast.py (declares the argtypes; exports are vx_render_*).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

struct RenderParams {            // mirrors _RenderParams in cpu_fast.py
    double R[9];                 // camera -> world rotation, row-major
    double t[3];                 // camera centre in the world
    double K[5];                 // fx, skew, cx, fy, cy
    double Minv[9];              // world ray direction d = Minv * (u, v, 1), row-major
    double base[3];              // world position of lattice point rel = (0, 0, 0)
    double voxel;                // lattice spacing, metres
    float near_m, far_m, sharpness, s_stop;      // s_stop = -ln(t_min)
    float rect_eps, dir_eps, x_min;              // s f is clamped to >= -x_min
    int32_t width, height, tile, field, samples, nthreads;   // field 0 = sdf, 1 = density
};

struct alignas(32) CellRec {     // 96 bytes
    float lo[3], size;
    float val[8];
    float col[3];
    float nrm[3];
    int32_t rect[4];             // u0 u1 v0 v1 (empty: u0 > u1 or v0 > v1)
    float pad[2];
};
static_assert(sizeof(CellRec) == 96, "CellRec layout");

inline uint64_t spread3(uint64_t v) {
    v &= 0x1FFFFF;
    v = (v | (v << 32)) & 0x1F00000000FFFFULL;
    v = (v | (v << 16)) & 0x1F0000FF0000FFULL;
    v = (v | (v << 8)) & 0x100F00F00F00F00FULL;
    v = (v | (v << 4)) & 0x10C30C30C30C30C3ULL;
    v = (v | (v << 2)) & 0x1249249249249249ULL;
    return v;
}

inline int set_threads(int n) {
#ifdef _OPENMP
    return n > 0 ? n : omp_get_max_threads();
#else
    (void)n;
    return 1;
#endif
}

inline double now_ms() {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct Ray {
    float o[3], d[3], inv[3], dnorm;
};

inline void make_ray(const RenderParams& p, int u, int v, Ray& r) {
    for (int a = 0; a < 3; ++a) {
        r.o[a] = (float)p.t[a];
        r.d[a] = (float)(p.Minv[3 * a] * u + p.Minv[3 * a + 1] * v + p.Minv[3 * a + 2]);
    }
    r.dnorm = std::sqrt(r.d[0] * r.d[0] + r.d[1] * r.d[1] + r.d[2] * r.d[2]);
    for (int a = 0; a < 3; ++a) {
        const float dd = std::fabs(r.d[a]) < p.dir_eps ? p.dir_eps : r.d[a];
        r.inv[a] = 1.0f / dd;
    }
}

inline int octant_of(const Ray& r) {
    return (r.d[0] < 0 ? 1 : 0) | (r.d[1] < 0 ? 2 : 0) | (r.d[2] < 0 ? 4 : 0);
}

inline void trilinear_w(const float q[3], float w[8]) {
    const float x1 = q[0], y1 = q[1], z1 = q[2];
    const float x0 = 1 - x1, y0 = 1 - y1, z0 = 1 - z1;
    w[0] = x0 * y0 * z0; w[1] = x1 * y0 * z0; w[2] = x0 * y1 * z0; w[3] = x1 * y1 * z0;
    w[4] = x0 * y0 * z1; w[5] = x1 * y0 * z1; w[6] = x0 * y1 * z1; w[7] = x1 * y1 * z1;
}

inline float clamp01(float x) { return std::min(std::max(x, 0.0f), 1.0f); }

// g(x) = 1 + exp(-x) with x = max(s f, -x_min): the NeuS transmittance ratio of a sub-segment
// is g(x_a) / g(x_b). For x > 17, exp(-x) < 2^-24 and g rounds to exactly 1 in float32.
inline float gfun(float x) { return x > 17.0f ? 1.0f : 1.0f + std::exp(-x); }

// Trilinear interpolation of corner values val (corner c = i + 2j + 4k) at q in [0, 1]^3.
inline float trilerp(const float q[3], const float* val) {
    const float a0 = val[0] + q[0] * (val[1] - val[0]), a1 = val[2] + q[0] * (val[3] - val[2]);
    const float a2 = val[4] + q[0] * (val[5] - val[4]), a3 = val[6] + q[0] * (val[7] - val[6]);
    const float b0 = a0 + q[1] * (a1 - a0), b1 = a2 + q[1] * (a3 - a2);
    return b0 + q[2] * (b1 - b0);
}

constexpr int MAXS = 16;          // max sub-segments per cell

struct PixState {                 // running state of one pixel along its list
    float T;                      // transmittance
    float acc[8];                 // alpha, sum w t, rgb, normal (forward)
    int64_t first;                // front-most cell (forward)
    float g[5];                   // dL/d(alpha, sum w t, rgb) (backward)
    float R_total, R_upto;        // backward bookkeeping
};

// One cell on one pixel's ray, [tin, tout] clipped and non-empty. Forward (BWD = false) updates
// st.acc / st.first; backward replays it and adds dL/d(values) to gv (8), dL/d(colour) to gc (3).
template <bool BWD, int FIELD, int KT>
inline void shade_cell(const RenderParams& p, const CellRec& cr, int64_t c, const Ray& r, float tin, float tout,
                       PixState& st, float* gv, float* gc) {
    const int K = KT > 0 ? KT : p.samples;          // KT > 0: sub-segments known at compile time
    const float inv_k = 1.0f / (float)K;
    constexpr int NS = KT > 0 ? KT + 1 : MAXS + 1;
    float tj[NS], fj[NS], wq[BWD ? NS : 1][8], gx[NS];
    const float inv_sz = 1.0f / cr.size;
    const float span = tout - tin;
    for (int j = 0; j <= K; ++j) {
        const float t = tin + span * ((float)j * inv_k);
        tj[j] = t;
        float q[3], w[8];
        for (int a = 0; a < 3; ++a) q[a] = clamp01((r.o[a] + t * r.d[a] - cr.lo[a]) * inv_sz);
        trilinear_w(q, w);
        fj[j] = trilerp(q, cr.val);
        if (BWD) {
            for (int k = 0; k < 8; ++k) wq[j][k] = w[k];
            gx[j] = 0;
        }
    }
    float T = st.T, wsum = 0, A = 0, D = 0, gq_col = 0;
    if (BWD) gq_col = st.g[2] * cr.col[0] + st.g[3] * cr.col[1] + st.g[4] * cr.col[2];
    float ga = 0;                 // sdf: g = 1 + exp(-x) at the sub-segment start
    if (FIELD == 0) ga = gfun(std::max(p.sharpness * fj[0], -p.x_min));
    for (int j = 0; j < K; ++j) {
        float T_after, dtau_da = 0, dtau_db = 0;
        if (FIELD == 0) {
            const float xb_raw = p.sharpness * fj[j + 1];
            const float gb = gfun(std::max(xb_raw, -p.x_min));
            const float ratio = ga / gb;                 // exp(-tau) before the clamp at 0
            T_after = T * std::min(ratio, 1.0f);
            if (ratio <= 1.0f) {
                if (BWD) {
                    dtau_da = p.sharpness * fj[j] >= -p.x_min ? p.sharpness * (ga - 1.0f) / ga : 0.0f;
                    dtau_db = xb_raw >= -p.x_min ? -p.sharpness * (gb - 1.0f) / gb : 0.0f;
                }
            }
            ga = gb;
        } else {
            const float dt = tj[j + 1] - tj[j];
            T_after = T * std::exp(-(0.5f * (fj[j] + fj[j + 1]) * dt * r.dnorm));
            dtau_da = dtau_db = 0.5f * dt * r.dnorm;
        }
        const float w = T - T_after;
        const float tm = 0.5f * (tj[j] + tj[j + 1]);
        if (BWD) {
            const float gq = st.g[0] + st.g[1] * tm + gq_col;
            st.R_upto += w * gq;
            const float dL_dtau = T_after * gq - (st.R_total - st.R_upto);
            gx[j] += dL_dtau * dtau_da;
            gx[j + 1] += dL_dtau * dtau_db;
        } else {
            A += w;
            D += w * tm;
        }
        wsum += w;
        T = T_after;
    }
    st.T = T;
    if (BWD) {
        for (int j = 0; j <= K; ++j)
            if (gx[j] != 0)
                for (int k = 0; k < 8; ++k) gv[k] += gx[j] * wq[j][k];
        gc[0] += wsum * st.g[2]; gc[1] += wsum * st.g[3]; gc[2] += wsum * st.g[4];
    } else {
        st.acc[0] += A; st.acc[1] += D;
        st.acc[2] += wsum * cr.col[0]; st.acc[3] += wsum * cr.col[1]; st.acc[4] += wsum * cr.col[2];
        st.acc[5] += wsum * cr.nrm[0]; st.acc[6] += wsum * cr.nrm[1]; st.acc[7] += wsum * cr.nrm[2];
        if (st.first < 0 && T <= 0.5f) st.first = c;
    }
}

// Draw one (tile, octant) group: the cells of `list` (front to back) splatted over the live pixels
// of their rectangles inside the tile whose rays have octant o. Per-pixel state in st (TS * TS).
template <bool BWD, int FIELD, int KT>
void draw_group(const RenderParams& p, const CellRec* cells, const int64_t* list, int64_t L, int bx, int by,
                int o, PixState* st, const Ray* rays, uint8_t* live, float* grad_values, float* grad_colors,
                int64_t* counts) {
    const int TS = p.tile;
    const int ex = std::min(bx + TS, (int)p.width), ey = std::min(by + TS, (int)p.height);
    const float T_stop = std::exp(-p.s_stop);
    int n_live = 0;
    for (int v = by; v < ey; ++v)
        for (int u = bx; u < ex; ++u) {
            const int i = (v - by) * TS + (u - bx);
            live[i] = 0;
            if (octant_of(rays[i]) != o) continue;
            if (BWD) {
                const float* g = st[i].g;
                if (g[0] == 0 && g[1] == 0 && g[2] == 0 && g[3] == 0 && g[4] == 0) continue;
            }
            live[i] = 1;
            ++n_live;
        }
    for (int64_t e = 0; e < L && n_live > 0; ++e) {
        const int64_t c = list[e];
        const CellRec& cr = cells[c];
        const int u0 = std::max(cr.rect[0], bx), u1 = std::min(cr.rect[1], ex - 1);
        const int v0 = std::max(cr.rect[2], by), v1 = std::min(cr.rect[3], ey - 1);
        float gv[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        float gc[3] = {0, 0, 0};
        for (int v = v0; v <= v1; ++v)
            for (int u = u0; u <= u1; ++u) {
                const int i = (v - by) * TS + (u - bx);
                if (!live[i]) continue;
                ++counts[0];
                const Ray& r = rays[i];
                float tin = -INFINITY, tout = INFINITY;
                for (int a = 0; a < 3; ++a) {
                    const float t1 = (cr.lo[a] - r.o[a]) * r.inv[a];
                    const float t2 = (cr.lo[a] + cr.size - r.o[a]) * r.inv[a];
                    tin = std::max(tin, std::min(t1, t2));
                    tout = std::min(tout, std::max(t1, t2));
                }
                tin = std::max(tin, p.near_m);
                tout = std::min(tout, p.far_m);
                if (!(tout > tin)) continue;
                ++counts[1];
                shade_cell<BWD, FIELD, KT>(p, cr, c, r, tin, tout, st[i], gv, gc);
                if (st[i].T < T_stop) {
                    live[i] = 0;
                    --n_live;
                }
            }
        if (BWD) {
            float* g = grad_values + 8 * c;
            for (int k = 0; k < 8; ++k)
                if (gv[k] != 0) {
#pragma omp atomic
                    g[k] += gv[k];
                }
            float* h = grad_colors + 3 * c;
            for (int k = 0; k < 3; ++k)
                if (gc[k] != 0) {
#pragma omp atomic
                    h[k] += gc[k];
                }
        }
    }
}

// Pack the cells: world box (float of the double position), corner values, colour, unit normal
// (the gradient at the centre, to free space: +grad for an SDF, -grad for a density) and the pixel
// rectangle of the projected box (the whole image for a box reaching in front of the near plane).
void pack_cells(const RenderParams& p, int64_t n, const int32_t* rel, const int32_t* lsize, const float* values,
                const float* colors, CellRec* cells, int nt) {
    const int W = p.width, H = p.height;
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int64_t c = 0; c < n; ++c) {
        CellRec& cr = cells[c];
        const double sz = (double)lsize[c] * p.voxel;
        double lo[3];
        for (int a = 0; a < 3; ++a) {
            lo[a] = p.base[a] + (double)rel[3 * c + a] * p.voxel;
            cr.lo[a] = (float)lo[a];
        }
        cr.size = (float)sz;
        const float* f = values + 8 * c;
        for (int k = 0; k < 8; ++k) cr.val[k] = f[k];
        for (int k = 0; k < 3; ++k) cr.col[k] = colors[3 * c + k];
        double g[3] = {0, 0, 0};
        for (int k = 0; k < 8; ++k)
            for (int a = 0; a < 3; ++a) g[a] += (((k >> a) & 1) ? 1.0 : -1.0) * (double)f[k];
        const double gn = std::sqrt(g[0] * g[0] + g[1] * g[1] + g[2] * g[2]);
        const double sgn = p.field == 0 ? 1.0 : -1.0;
        for (int a = 0; a < 3; ++a) cr.nrm[a] = gn > 0 ? (float)(sgn * g[a] / gn) : 0.0f;
        cr.pad[0] = cr.pad[1] = 0;
        double zmin = INFINITY, zmax = -INFINITY, umin = INFINITY, umax = -INFINITY, vmin = INFINITY, vmax = -INFINITY;
        for (int k = 0; k < 8; ++k) {
            double pw[3];
            for (int a = 0; a < 3; ++a) pw[a] = (double)cr.lo[a] + (double)cr.size * ((k >> a) & 1) - p.t[a];
            double pc[3];
            for (int a = 0; a < 3; ++a) pc[a] = p.R[a] * pw[0] + p.R[3 + a] * pw[1] + p.R[6 + a] * pw[2];
            const double z = pc[2];
            zmin = std::min(zmin, z);
            zmax = std::max(zmax, z);
            const double zc = std::max(z, 1e-9);
            const double uu = (p.K[0] * pc[0] + p.K[1] * pc[1]) / zc + p.K[2];
            const double vv = p.K[3] * pc[1] / zc + p.K[4];
            umin = std::min(umin, uu); umax = std::max(umax, uu);
            vmin = std::min(vmin, vv); vmax = std::max(vmax, vv);
        }
        int32_t* r = cr.rect;
        if (zmax <= p.near_m || zmin >= p.far_m) {
            r[0] = W; r[1] = -1; r[2] = 0; r[3] = -1;
            continue;
        }
        double u0, u1, v0, v1;
        if (zmin < p.near_m) {
            u0 = 0; u1 = W - 1; v0 = 0; v1 = H - 1;
        } else {
            u0 = std::ceil(umin - p.rect_eps); u1 = std::floor(umax + p.rect_eps);
            v0 = std::ceil(vmin - p.rect_eps); v1 = std::floor(vmax + p.rect_eps);
        }
        u0 = std::max(0.0, std::min((double)W, u0)); u1 = std::max(-1.0, std::min((double)W - 1, u1));
        v0 = std::max(0.0, std::min((double)H, v0)); v1 = std::max(-1.0, std::min((double)H - 1, v1));
        r[0] = (int32_t)u0; r[1] = (int32_t)u1; r[2] = (int32_t)v0; r[3] = (int32_t)v1;
    }
}

// Tile lists and octant masks; fills group_off (ntiles * 8 + 1) and returns the entry count.
int64_t bin(const RenderParams& p, int64_t n, const CellRec* cells, std::vector<int32_t>& tile_cells,
            std::vector<int64_t>& tile_off, std::vector<uint8_t>& masks, int64_t* group_off, int nt) {
    const int W = p.width, H = p.height, TS = p.tile;
    const int tx = (W + TS - 1) / TS, ty = (H + TS - 1) / TS, ntiles = tx * ty;
    masks.assign(ntiles, 0);
#pragma omp parallel for schedule(static) num_threads(nt)
    for (int t = 0; t < ntiles; ++t) {
        const int bx = (t % tx) * TS, by = (t / tx) * TS;
        uint8_t m = 0;
        for (int v = by; v < std::min(by + TS, H); ++v)
            for (int u = bx; u < std::min(bx + TS, W); ++u) {
                Ray r;
                make_ray(p, u, v, r);
                m |= (uint8_t)(1u << octant_of(r));
            }
        masks[t] = m;
    }
    std::vector<int64_t> cnt(ntiles + 1, 0);
    for (int64_t c = 0; c < n; ++c) {
        const int32_t* r = cells[c].rect;
        if (r[0] > r[1] || r[2] > r[3]) continue;
        for (int y = r[2] / TS; y <= r[3] / TS; ++y)
            for (int x = r[0] / TS; x <= r[1] / TS; ++x) cnt[y * tx + x]++;
    }
    tile_off.assign(ntiles + 1, 0);
    for (int t = 0; t < ntiles; ++t) tile_off[t + 1] = tile_off[t] + cnt[t];
    tile_cells.resize(tile_off[ntiles]);
    std::vector<int64_t> cur(tile_off.begin(), tile_off.end() - 1);
    for (int64_t c = 0; c < n; ++c) {
        const int32_t* r = cells[c].rect;
        if (r[0] > r[1] || r[2] > r[3]) continue;
        for (int y = r[2] / TS; y <= r[3] / TS; ++y)
            for (int x = r[0] / TS; x <= r[1] / TS; ++x) tile_cells[cur[y * tx + x]++] = (int32_t)c;
    }
    group_off[0] = 0;
    for (int t = 0; t < ntiles; ++t)
        for (int o = 0; o < 8; ++o) {
            const int64_t k = (int64_t)t * 8 + o;
            group_off[k + 1] = group_off[k] + (((masks[t] >> o) & 1) ? cnt[t] : 0);
        }
    return group_off[(int64_t)ntiles * 8];
}

double g_stats[8];                // phase times and counters of the last forward (benchmarks)

template <int FIELD, int K>
void draw_all(const RenderParams& p, const CellRec* cells, const int32_t* rel, const int32_t* lsize,
              const int32_t* extent, const std::vector<int32_t>& tile_cells, const std::vector<int64_t>& tile_off,
              const std::vector<uint8_t>& masks, const int64_t* group_off, int64_t* entries, float* out_acc,
              int64_t* out_index, const int64_t* ids, int nt, int64_t* tested, int64_t* shaded) {
    const int W = p.width, H = p.height, TS = p.tile;
    const int tx = (W + TS - 1) / TS, ty = (H + TS - 1) / TS, ntiles = tx * ty;
#pragma omp parallel num_threads(nt)
    {
        std::vector<std::pair<uint64_t, int64_t>> keyed;
        std::vector<PixState> st(TS * TS);
        std::vector<Ray> rays(TS * TS);
        std::vector<uint8_t> live(TS * TS);
        int64_t counts[2] = {0, 0};
#pragma omp for schedule(dynamic, 1) nowait
        for (int t = 0; t < ntiles; ++t) {
            const int64_t b0 = tile_off[t], nc = tile_off[t + 1] - b0;
            const int bx = (t % tx) * TS, by = (t / tx) * TS;
            const int ex = std::min(bx + TS, W), ey = std::min(by + TS, H);
            for (int v = by; v < ey; ++v)
                for (int u = bx; u < ex; ++u) {
                    const int i = (v - by) * TS + (u - bx);
                    make_ray(p, u, v, rays[i]);
                    st[i].T = 1.0f;
                    for (int k = 0; k < 8; ++k) st[i].acc[k] = 0;
                    st[i].first = -1;
                }
            for (int o = 0; o < 8 && nc > 0; ++o) {
                if (!((masks[t] >> o) & 1)) continue;
                int64_t* list = entries + group_off[(int64_t)t * 8 + o];
                keyed.resize(nc);
                for (int64_t i = 0; i < nc; ++i) {
                    const int32_t c = tile_cells[b0 + i];
                    uint64_t q[3];
                    for (int a = 0; a < 3; ++a) {
                        const int64_t x = rel[3 * c + a];
                        q[a] = (uint64_t)(((o >> a) & 1) ? (extent[a] - x - lsize[c]) : x);
                    }
                    keyed[i] = {spread3(q[0]) | (spread3(q[1]) << 1) | (spread3(q[2]) << 2), c};
                }
                std::sort(keyed.begin(), keyed.end());
                for (int64_t i = 0; i < nc; ++i) list[i] = keyed[i].second;
                draw_group<false, FIELD, K>(p, cells, list, nc, bx, by, o, st.data(), rays.data(), live.data(),
                                            nullptr, nullptr, counts);
            }
            for (int v = by; v < ey; ++v)
                for (int u = bx; u < ex; ++u) {
                    const int i = (v - by) * TS + (u - bx);
                    const int64_t pix = (int64_t)v * W + u;
                    float* out = out_acc + 8 * pix;
                    for (int k = 0; k < 8; ++k) out[k] = st[i].acc[k];
                    const int64_t f = st[i].first;
                    out_index[pix] = (ids != nullptr && f >= 0) ? ids[f] : f;
                }
        }
#pragma omp atomic
        *tested += counts[0];
#pragma omp atomic
        *shaded += counts[1];
    }
}

template <int FIELD>
void draw_dispatch(const RenderParams& p, const CellRec* cells, const int32_t* rel, const int32_t* lsize,
                   const int32_t* extent, const std::vector<int32_t>& tile_cells, const std::vector<int64_t>& tile_off,
                   const std::vector<uint8_t>& masks, const int64_t* group_off, int64_t* entries, float* out_acc,
                   int64_t* out_index, const int64_t* ids, int nt, int64_t* tested, int64_t* shaded) {
#define VX_DRAW(KK) draw_all<FIELD, KK>(p, cells, rel, lsize, extent, tile_cells, tile_off, masks, group_off, \
                                        entries, out_acc, out_index, ids, nt, tested, shaded)
    switch (p.samples) {
        case 1: VX_DRAW(1); break;
        case 2: VX_DRAW(2); break;
        case 3: VX_DRAW(3); break;
        case 4: VX_DRAW(4); break;
        default: VX_DRAW(0); break;       // any K (read at run time)
    }
#undef VX_DRAW
}

template <int FIELD>
void backward_all(const RenderParams& p, const CellRec* cells, const int64_t* entries, const int64_t* group_off,
                  const float* fwd_acc, const float* grad_acc, float* grad_values, float* grad_colors, int nt) {
    const int W = p.width, H = p.height, TS = p.tile;
    const int tx = (W + TS - 1) / TS, ty = (H + TS - 1) / TS, ntiles = tx * ty;
#pragma omp parallel num_threads(nt)
    {
        std::vector<PixState> st(TS * TS);
        std::vector<Ray> rays(TS * TS);
        std::vector<uint8_t> live(TS * TS);
        int64_t counts[2] = {0, 0};
#pragma omp for schedule(dynamic, 1)
        for (int t = 0; t < ntiles; ++t) {
            const int bx = (t % tx) * TS, by = (t / tx) * TS;
            const int ex = std::min(bx + TS, W), ey = std::min(by + TS, H);
            for (int v = by; v < ey; ++v)
                for (int u = bx; u < ex; ++u) {
                    const int i = (v - by) * TS + (u - bx);
                    const int64_t pix = (int64_t)v * W + u;
                    make_ray(p, u, v, rays[i]);
                    PixState& q = st[i];
                    q.T = 1.0f;
                    q.R_upto = 0;
                    const float* ga = grad_acc + 5 * pix;
                    const float* fa = fwd_acc + 8 * pix;
                    for (int k = 0; k < 5; ++k) q.g[k] = ga[k];
                    q.R_total = ga[0] * fa[0] + ga[1] * fa[1] + ga[2] * fa[2] + ga[3] * fa[3] + ga[4] * fa[4];
                }
            for (int o = 0; o < 8; ++o) {
                const int64_t k = (int64_t)t * 8 + o;
                const int64_t L = group_off[k + 1] - group_off[k];
                if (L == 0) continue;
                draw_group<true, FIELD, 0>(p, cells, entries + group_off[k], L, bx, by, o, st.data(), rays.data(),
                                           live.data(), grad_values, grad_colors, counts);
            }
        }
    }
}

}  // namespace

extern "C" {

int vx_render_abi() { return 3; }

int64_t vx_render_cell_bytes() { return (int64_t)sizeof(CellRec); }

// Last forward: ms in packing, binning, sort + draw; entries; pixel x cell rectangle tests; ray hits.
void vx_render_stats(double* out) {
    for (int i = 0; i < 8; ++i) out[i] = g_stats[i];
}

// Forward. n cells: rel (n, 3) int32 lattice coordinates relative to p.base, lsize (n) int32 edge
// in lattice units, extent (3) int32 (mirroring for the order keys), values (n, 8) and colors
// (n, 3) float32. Writes cells (n records of vx_render_cell_bytes(), kept for the backward),
// out_acc (H*W, 8) = alpha, sum w t, rgb, normal; out_index (H*W) int64: the front-most cell, or
// ids[cell] when ids (n) is not null, -1 where none; entries (cap)
// and group_off (ntiles*8+1) int64. Returns the entry count, or -(needed) when cap is too small
// (then nothing is drawn).
int64_t vx_render_forward(const RenderParams* pp, int64_t n, const int32_t* rel, const int32_t* lsize,
                          const int32_t* extent, const float* values, const float* colors, const int64_t* ids,
                          void* cells_out, float* out_acc, int64_t* out_index, int64_t* entries, int64_t cap,
                          int64_t* group_off) {
    const RenderParams& p = *pp;
    const int nt = set_threads(p.nthreads);
    CellRec* cells = static_cast<CellRec*>(cells_out);
    const double t0 = now_ms();
    pack_cells(p, n, rel, lsize, values, colors, cells, nt);
    const double t1 = now_ms();
    std::vector<int32_t> tile_cells;
    std::vector<int64_t> tile_off;
    std::vector<uint8_t> masks;
    const int64_t E = bin(p, n, cells, tile_cells, tile_off, masks, group_off, nt);
    const double t2 = now_ms();
    if (E > cap) return -E;
    int64_t tested = 0, shaded = 0;
    if (p.field == 0)
        draw_dispatch<0>(p, cells, rel, lsize, extent, tile_cells, tile_off, masks, group_off, entries, out_acc,
                         out_index, ids, nt, &tested, &shaded);
    else
        draw_dispatch<1>(p, cells, rel, lsize, extent, tile_cells, tile_off, masks, group_off, entries, out_acc,
                         out_index, ids, nt, &tested, &shaded);
    g_stats[0] = t1 - t0;
    g_stats[1] = t2 - t1;
    g_stats[2] = now_ms() - t2;
    g_stats[3] = (double)E;
    g_stats[4] = (double)tested;
    g_stats[5] = (double)shaded;
    return E;
}

// Backward: replays the forward from the cells / entries / group_off it wrote. fwd_acc (H*W, 8)
// the forward sums, grad_acc (H*W, 5) dL/d(alpha, sum w t, r, g, b). Adds into grad_values (n, 8)
// and grad_colors (n, 3) (zero them first).
void vx_render_backward(const RenderParams* pp, const void* cells_in, const int64_t* entries,
                        const int64_t* group_off, const float* fwd_acc, const float* grad_acc, float* grad_values,
                        float* grad_colors) {
    const RenderParams& p = *pp;
    const int nt = set_threads(p.nthreads);
    const CellRec* cells = static_cast<const CellRec*>(cells_in);
    if (p.field == 0)
        backward_all<0>(p, cells, entries, group_off, fwd_acc, grad_acc, grad_values, grad_colors, nt);
    else
        backward_all<1>(p, cells, entries, group_off, fwd_acc, grad_acc, grad_values, grad_colors, nt);
}

}  // extern "C"
