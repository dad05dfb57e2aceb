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
//
// Forward (the hot path): the tile's per-pixel state is kept as structure of arrays (TileSoA: ray
// direction, 1/direction, |direction|, T, the 8 sums, live and "no front-most cell yet" masks; row
// stride TS) and each row of a cell's rectangle is processed VW = 8 pixels at a time in SIMD lanes
// (GCC vector extensions, so any target compiles; AVX2 on x86, VW = 4 without it). A lane is active
// when its pixel is live (ray octant of the group, not yet stopped) and inside the rectangle;
// inactive lanes compute garbage that is never stored (results are merged with a lane select).
// Every lane does exactly the scalar arithmetic of one ray, operation by operation (same order,
// std::min / std::max semantics as lane selects, no contraction into FMA), and exp is vexp below,
// bit-identical to the scalar kexp: the images are bitwise those of a scalar per-pixel loop. A
// row whose slab test fails for all its lanes costs only that test; an sdf row where s f > 17 at
// every sub-segment end of every active lane (free space: g = 1, w = 0) skips the exps, divisions
// and stores (they would change nothing).
// Backward: scalar per pixel (PixState, shade_cell), replaying the same arithmetic with kexp.
// Packing projects a cell's 8 corners in 8 double lanes (same per-corner arithmetic); binning
// needs only the ray directions' signs for the octant masks.
//
// Statistics (vx_render_stats): pixel x cell tests = live pixels inside a cell's rectangle (the
// active lanes before the slab test), hits = those whose clipped segment is non-empty.
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
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define VX_EXP_FMA 1              // kexp / vexp: range reduction + polynomial with hardware FMA
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

// exp for the transmittance, float32, our own: x = n ln2 + r with n the nearest integer to x / ln2
// (|r| <= ln2 / 2), exp(r) by its Taylor series to degree 7 in double (truncation below 6e-9
// relative, under half a float32 ulp), times 2^n put together in the exponent bits. The point is
// that the scalar kexp and the SIMD vexp below run the same operations, so the vector forward and
// the scalar backward replay identical rays; against std::exp it differs by at most one ulp.
// |x| >= 87 (overflow, underflow, NaN) goes to std::exp.
#ifdef VX_EXP_FMA
constexpr double kExpLog2e = 1.4426950408889634, kExpLn2 = 0.6931471805599453;
constexpr double kExpShift = 6755399441055744.0;        // 1.5 * 2^52: adding it rounds to an integer
constexpr double kExpC[8] = {1.0, 1.0, 1.0 / 2, 1.0 / 6, 1.0 / 24, 1.0 / 120, 1.0 / 720, 1.0 / 5040};

inline float kexp(float x) {
    if (!(std::fabs(x) < 87.0f)) return std::exp(x);
    const double xd = (double)x;
    const double t = xd * kExpLog2e + kExpShift;          // the low mantissa bits of t hold n
    uint64_t bits;
    std::memcpy(&bits, &t, 8);
    const double n = t - kExpShift;
    const double r = std::fma(-n, kExpLn2, xd);
    double p = kExpC[7];
    for (int k = 6; k >= 0; --k) p = std::fma(p, r, kExpC[k]);
    const uint64_t sb = (bits + 1023) << 52;               // 2^n (|n| <= 126: a normal double)
    double sc;
    std::memcpy(&sc, &sb, 8);
    return (float)(p * sc);
}
#else
inline float kexp(float x) { return std::exp(x); }
#endif

// g(x) = 1 + exp(-x) with x = max(s f, -x_min): the NeuS transmittance ratio of a sub-segment
// is g(x_a) / g(x_b). For x > 17, exp(-x) < 2^-24 and g rounds to exactly 1 in float32.
inline float gfun(float x) { return x > 17.0f ? 1.0f : 1.0f + kexp(-x); }

// Trilinear interpolation of corner values val (corner c = i + 2j + 4k) at q in [0, 1]^3.
inline float trilerp(const float q[3], const float* val) {
    const float a0 = val[0] + q[0] * (val[1] - val[0]), a1 = val[2] + q[0] * (val[3] - val[2]);
    const float a2 = val[4] + q[0] * (val[5] - val[4]), a3 = val[6] + q[0] * (val[7] - val[6]);
    const float b0 = a0 + q[1] * (a1 - a0), b1 = a2 + q[1] * (a3 - a2);
    return b0 + q[2] * (b1 - b0);
}

constexpr int MAXS = 16;          // max sub-segments per cell

// ------------------------------------------------------------------------------- SIMD lanes
#ifdef __AVX2__
constexpr int VW = 8;                                    // lanes: 8 x float32 = one AVX2 register
#else
constexpr int VW = 4;                                    // SSE / NEON width elsewhere
#endif
typedef float vf __attribute__((vector_size(4 * VW)));
typedef int32_t vi __attribute__((vector_size(4 * VW)));  // lane masks: -1 (true) or 0

inline vf ldf(const float* a) { vf v; std::memcpy(&v, a, sizeof v); return v; }   // unaligned
inline vi ldi(const int32_t* a) { vi v; std::memcpy(&v, a, sizeof v); return v; }
inline void stf(float* a, vf v) { std::memcpy(a, &v, sizeof v); }
inline void sti(int32_t* a, vi v) { std::memcpy(a, &v, sizeof v); }
inline vf splat(float x) { return vf{} + x; }
// std::min / std::max lane by lane with the same operand roles (b < a ? b : a), so ties, signed
// zeros and NaNs come out as in the scalar code.
inline vf vmin(vf a, vf b) { return b < a ? b : a; }
inline vf vmax(vf a, vf b) { return a < b ? b : a; }
inline vf vclamp01(vf x) { return vmin(vmax(x, splat(0.0f)), splat(1.0f)); }
inline unsigned lanes(vi m) {                            // bit k = lane k of the mask
#if defined(__AVX2__)
    return (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps((__m256i)m));
#elif defined(__SSE2__)
    return (unsigned)__builtin_ia32_movmskps((__attribute__((vector_size(16))) float)m);
#else
    unsigned b = 0;
    for (int k = 0; k < VW; ++k) b |= (m[k] != 0 ? 1u : 0u) << k;
    return b;
#endif
}

#ifdef VX_EXP_FMA
inline __m256d vexp4(__m128 x) {                         // kexp on 4 lanes, in double
    const __m256d xd = _mm256_cvtps_pd(x);
    const __m256d shift = _mm256_set1_pd(kExpShift);
    const __m256d t = _mm256_add_pd(_mm256_mul_pd(xd, _mm256_set1_pd(kExpLog2e)), shift);
    const __m256d n = _mm256_sub_pd(t, shift);
    const __m256d r = _mm256_fnmadd_pd(n, _mm256_set1_pd(kExpLn2), xd);
    __m256d p = _mm256_set1_pd(kExpC[7]);
    for (int k = 6; k >= 0; --k) p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(kExpC[k]));
    const __m256i sb = _mm256_slli_epi64(_mm256_add_epi64(_mm256_castpd_si256(t), _mm256_set1_epi64x(1023)), 52);
    return _mm256_mul_pd(p, _mm256_castsi256_pd(sb));
}
#endif

// kexp lane by lane for the lanes of `need` (the others get unspecified values).
inline vf vexp(vf x, vi need) {
#ifdef VX_EXP_FMA
    const __m256 xv = (__m256)x;
    const __m256d lo = vexp4(_mm256_castps256_ps128(xv)), hi = vexp4(_mm256_extractf128_ps(xv, 1));
    vf y = (vf)_mm256_set_m128(_mm256_cvtpd_ps(hi), _mm256_cvtpd_ps(lo));
    const vf ax = (vf)((vi)x & 0x7fffffff);                 // |x|
    const vi big = need & ~(ax < splat(87.0f));
#else
    vf y = x;
    const vi big = need;
#endif
    for (unsigned b = lanes(big); b != 0; b &= b - 1) {   // |x| >= 87 (rare), or no FMA
        const int k = __builtin_ctz(b);
        y[k] = kexp(x[k]);
    }
    return y;
}

// gfun lane by lane.
inline vf vgfun(vf x, vi need) {
    const vi one = x > splat(17.0f);
    if (lanes(need & ~one) == 0) return splat(1.0f);
    const vf e = vexp(-x, need & ~one);
    return one ? splat(1.0f) : splat(1.0f) + e;
}

struct PixState {                 // running state of one pixel along its list (backward)
    float T;                      // transmittance
    float g[5];                   // dL/d(alpha, sum w t, rgb)
    float R_total, R_upto;        // backward bookkeeping
};

// Backward of one cell on one pixel's ray, [tin, tout] clipped and non-empty: replays the forward
// (shade_row below; same arithmetic, scalar) and adds dL/d(values) to gv (8), dL/d(colour) to gc (3).
template <int FIELD, int KT>
inline void shade_cell(const RenderParams& p, const CellRec& cr, const Ray& r, float tin, float tout, PixState& st,
                       float* gv, float* gc) {
    const int K = KT > 0 ? KT : p.samples;          // KT > 0: sub-segments known at compile time
    const float inv_k = 1.0f / (float)K;
    constexpr int NS = KT > 0 ? KT + 1 : MAXS + 1;
    float tj[NS], fj[NS], wq[NS][8], gx[NS];
    const float inv_sz = 1.0f / cr.size;
    const float span = tout - tin;
    for (int j = 0; j <= K; ++j) {
        const float t = tin + span * ((float)j * inv_k);
        tj[j] = t;
        float q[3];
        for (int a = 0; a < 3; ++a) q[a] = clamp01((r.o[a] + t * r.d[a] - cr.lo[a]) * inv_sz);
        trilinear_w(q, wq[j]);
        fj[j] = trilerp(q, cr.val);
        gx[j] = 0;
    }
    float T = st.T, wsum = 0;
    const float gq_col = st.g[2] * cr.col[0] + st.g[3] * cr.col[1] + st.g[4] * cr.col[2];
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
                dtau_da = p.sharpness * fj[j] >= -p.x_min ? p.sharpness * (ga - 1.0f) / ga : 0.0f;
                dtau_db = xb_raw >= -p.x_min ? -p.sharpness * (gb - 1.0f) / gb : 0.0f;
            }
            ga = gb;
        } else {
            const float dt = tj[j + 1] - tj[j];
            T_after = T * kexp(-(0.5f * (fj[j] + fj[j + 1]) * dt * r.dnorm));
            dtau_da = dtau_db = 0.5f * dt * r.dnorm;
        }
        const float w = T - T_after;
        const float tm = 0.5f * (tj[j] + tj[j + 1]);
        const float gq = st.g[0] + st.g[1] * tm + gq_col;
        st.R_upto += w * gq;
        const float dL_dtau = T_after * gq - (st.R_total - st.R_upto);
        gx[j] += dL_dtau * dtau_da;
        gx[j + 1] += dL_dtau * dtau_db;
        wsum += w;
        T = T_after;
    }
    st.T = T;
    for (int j = 0; j <= K; ++j)
        if (gx[j] != 0)
            for (int k = 0; k < 8; ++k) gv[k] += gx[j] * wq[j][k];
    gc[0] += wsum * st.g[2]; gc[1] += wsum * st.g[3]; gc[2] += wsum * st.g[4];
}

// Backward of one (tile, octant) group: the cells of `list` (front to back) replayed over the
// pixels of their rectangles inside the tile whose rays have octant o and a non-zero output
// gradient. Per-pixel state in st (TS * TS).
template <int FIELD, int KT>
void draw_group_bwd(const RenderParams& p, const CellRec* cells, const int64_t* list, int64_t L, int bx, int by,
                    int o, PixState* st, const Ray* rays, uint8_t* live, float* grad_values, float* grad_colors) {
    const int TS = p.tile;
    const int ex = std::min(bx + TS, (int)p.width), ey = std::min(by + TS, (int)p.height);
    const float T_stop = std::exp(-p.s_stop);
    int n_live = 0;
    for (int v = by; v < ey; ++v)
        for (int u = bx; u < ex; ++u) {
            const int i = (v - by) * TS + (u - bx);
            live[i] = 0;
            if (octant_of(rays[i]) != o) continue;
            const float* g = st[i].g;
            if (g[0] == 0 && g[1] == 0 && g[2] == 0 && g[3] == 0 && g[4] == 0) continue;
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
                shade_cell<FIELD, KT>(p, cr, r, tin, tout, st[i], gv, gc);
                if (st[i].T < T_stop) {
                    live[i] = 0;
                    --n_live;
                }
            }
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

// Forward per-pixel state of one tile, structure of arrays: pixel i = (v - by) * TS + (u - bx);
// VW lanes of padding after the last pixel so that a vector load starting anywhere in the tile
// stays inside (the padding is never live).
struct TileSoA {
    int n;                        // TS * TS
    std::vector<float> buf;
    float *d[3], *inv[3], *dnorm, *T, *acc[8];  // ray direction, 1 / direction, |direction|; sums
    std::vector<int32_t> ibuf;
    int32_t *oct, *live, *nofirst;              // ray octant; lane masks (-1 / 0)
    std::vector<int64_t> first;                 // front-most cell (-1: none yet)
    explicit TileSoA(int TS) : n(TS * TS), buf((size_t)16 * (n + VW)), ibuf((size_t)3 * (n + VW)), first(n) {
        float* f = buf.data();
        const size_t st = (size_t)n + VW;
        for (int a = 0; a < 3; ++a) d[a] = f + a * st, inv[a] = f + (3 + a) * st;
        dnorm = f + 6 * st;
        T = f + 7 * st;
        for (int k = 0; k < 8; ++k) acc[k] = f + (8 + k) * st;
        oct = ibuf.data();
        live = oct + st;
        nofirst = live + st;
    }
};

// Per-cell constants of the forward, computed once per cell (scalar, as the per-ray code did).
struct CellConst {
    float slab_lo[3], slab_hi[3];  // lo - o, lo + size - o
    float o[3];                    // ray origin (the camera centre, float)
    float inv_sz;
};

// Forward of one cell on the lanes h of one rectangle row (pixels i0 .. i0 + VW - 1) with clipped
// segments [tin, tout]: each lane is the per-ray arithmetic of the scalar shade_cell (sub-segment
// ends, trilinear field, NeuS ratio or trapezoid density, w = T_before - T_after), then the sums,
// T and the front-most cell are updated in the lanes of h. Returns the new T (valid in h).
template <int FIELD, int KT>
inline vf shade_row(const RenderParams& p, const CellRec& cr, const CellConst& cc, int64_t c, TileSoA& s, int i0,
                    vi h, vf tin, vf tout) {
    const int K = KT > 0 ? KT : p.samples;
    const float inv_k = 1.0f / (float)K;
    constexpr int NS = KT > 0 ? KT + 1 : MAXS + 1;
    vf tj[NS], fj[NS];
    const vf dx = ldf(s.d[0] + i0), dy = ldf(s.d[1] + i0), dz = ldf(s.d[2] + i0);
    const vf span = tout - tin;
    const vf inv_sz = splat(cc.inv_sz);
    for (int j = 0; j <= K; ++j) {
        const vf t = tin + span * ((float)j * inv_k);
        tj[j] = t;
        const vf qx = vclamp01((cc.o[0] + t * dx - cr.lo[0]) * inv_sz);
        const vf qy = vclamp01((cc.o[1] + t * dy - cr.lo[1]) * inv_sz);
        const vf qz = vclamp01((cc.o[2] + t * dz - cr.lo[2]) * inv_sz);
        const float* val = cr.val;
        const vf a0 = val[0] + qx * (val[1] - val[0]), a1 = val[2] + qx * (val[3] - val[2]);
        const vf a2 = val[4] + qx * (val[5] - val[4]), a3 = val[6] + qx * (val[7] - val[6]);
        const vf b0 = a0 + qy * (a1 - a0), b1 = a2 + qy * (a3 - a2);
        fj[j] = b0 + qz * (b1 - b0);
    }
    const vf T0 = ldf(s.T + i0);
    vf gj[FIELD == 0 ? NS : 1], dn = splat(0.0f);
    if (FIELD == 0) {
        // g = 1 + exp(-x), x = max(s f, -x_min). Where x > 17 at every end point of every active
        // lane (free space well in front of the surface) g = 1, every ratio is 1 and w = 0: the
        // cell changes nothing (adding +0 leaves the sums bitwise unchanged), so skip it.
        vf xj[NS];
        vi near = vi{};
        for (int j = 0; j <= K; ++j) {
            xj[j] = vmax(p.sharpness * fj[j], splat(-p.x_min));
            near |= ~(xj[j] > splat(17.0f));
        }
        if (lanes(h & near) == 0) return T0;
        for (int j = 0; j <= K; ++j) gj[j] = vgfun(xj[j], h);
    } else {
        dn = ldf(s.dnorm + i0);
    }
    vf T = T0, wsum = splat(0.0f), A = splat(0.0f), D = splat(0.0f);
    for (int j = 0; j < K; ++j) {
        vf T_after;
        if (FIELD == 0) {
            T_after = T * vmin(gj[j] / gj[j + 1], splat(1.0f));
        } else {
            const vf dt = tj[j + 1] - tj[j];
            T_after = T * vexp(-(0.5f * (fj[j] + fj[j + 1]) * dt * dn), h);
        }
        const vf w = T - T_after;
        const vf tm = 0.5f * (tj[j] + tj[j + 1]);
        A += w;
        D += w * tm;
        wsum += w;
        T = T_after;
    }
    stf(s.T + i0, h ? T : T0);
    const vf add[8] = {A, D, wsum * cr.col[0], wsum * cr.col[1], wsum * cr.col[2],
                       wsum * cr.nrm[0], wsum * cr.nrm[1], wsum * cr.nrm[2]};
    for (int k = 0; k < 8; ++k) {
        const vf old = ldf(s.acc[k] + i0);
        stf(s.acc[k] + i0, h ? old + add[k] : old);
    }
    const vi nf = ldi(s.nofirst + i0);
    const vi now = h & nf & (T <= 0.5f);          // opacity reaches 1/2 in this cell
    if (unsigned b = lanes(now)) {
        sti(s.nofirst + i0, nf & ~now);
        for (; b != 0; b &= b - 1) s.first[i0 + __builtin_ctz(b)] = c;
    }
    return T;
}

// Forward of one (tile, octant) group: the cells of `list` (front to back) splatted over the live
// pixels of their rectangles inside the tile whose rays have octant o, VW pixels of a rectangle row
// at a time. counts: pixel x cell tests, hits.
template <int FIELD, int KT>
void draw_group_fwd(const RenderParams& p, const CellRec* cells, const int64_t* list, int64_t L, int bx, int by,
                    int o, TileSoA& s, int64_t* counts) {
    const int TS = p.tile;
    const int ex = std::min(bx + TS, (int)p.width), ey = std::min(by + TS, (int)p.height);
    const float T_stop = std::exp(-p.s_stop);
    int n_live = 0;
    for (int i = 0; i < s.n; ++i) {
        s.live[i] = s.oct[i] == o ? -1 : 0;         // oct is -1 outside the image
        n_live += s.oct[i] == o;
    }
    const float o3[3] = {(float)p.t[0], (float)p.t[1], (float)p.t[2]};
    vi lane;
    for (int k = 0; k < VW; ++k) lane[k] = k;
    int64_t tested = 0, hit = 0;
    constexpr int64_t PF = 8;                       // records are random in memory: prefetch ahead
    for (int64_t e = 0; e < L && e < PF; ++e) {
        __builtin_prefetch(cells + list[e]);
        __builtin_prefetch((const char*)(cells + list[e]) + sizeof(CellRec) - 1);
    }
    for (int64_t e = 0; e < L && n_live > 0; ++e) {
        if (e + PF < L) {
            __builtin_prefetch(cells + list[e + PF]);
            __builtin_prefetch((const char*)(cells + list[e + PF]) + sizeof(CellRec) - 1);
        }
        const int64_t c = list[e];
        const CellRec& cr = cells[c];
        const int u0 = std::max(cr.rect[0], bx), u1 = std::min(cr.rect[1], ex - 1);
        const int v0 = std::max(cr.rect[2], by), v1 = std::min(cr.rect[3], ey - 1);
        CellConst cc;
        for (int a = 0; a < 3; ++a) {
            cc.o[a] = o3[a];
            cc.slab_lo[a] = cr.lo[a] - o3[a];
            cc.slab_hi[a] = cr.lo[a] + cr.size - o3[a];
        }
        cc.inv_sz = 1.0f / cr.size;
        for (int v = v0; v <= v1; ++v)
            for (int u = u0; u <= u1; u += VW) {
                const int i0 = (v - by) * TS + (u - bx);
                const vi m = ldi(s.live + i0) & (lane < u1 - u + 1);
                const unsigned mb = lanes(m);
                if (mb == 0) continue;
                tested += __builtin_popcount(mb);
                vf tin = splat(-INFINITY), tout = splat(INFINITY);
                for (int a = 0; a < 3; ++a) {
                    const vf ia = ldf(s.inv[a] + i0);
                    const vf t1 = cc.slab_lo[a] * ia, t2 = cc.slab_hi[a] * ia;
                    tin = vmax(tin, vmin(t1, t2));
                    tout = vmin(tout, vmax(t1, t2));
                }
                tin = vmax(tin, splat(p.near_m));
                tout = vmin(tout, splat(p.far_m));
                const vi h = m & (tout > tin);
                const unsigned hb = lanes(h);
                if (hb == 0) continue;
                hit += __builtin_popcount(hb);
                const vf T = shade_row<FIELD, KT>(p, cr, cc, c, s, i0, h, tin, tout);
                const vi dead = h & (T < T_stop);
                if (const unsigned db = lanes(dead)) {
                    sti(s.live + i0, ldi(s.live + i0) & ~dead);
                    n_live -= __builtin_popcount(db);
                }
            }
    }
    counts[0] += tested;
    counts[1] += hit;
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
        // The 8 corners at once (one lane each; the scalar per-corner arithmetic, in double).
        typedef double v8d __attribute__((vector_size(64)));
        const v8d bit[3] = {{0, 1, 0, 1, 0, 1, 0, 1}, {0, 0, 1, 1, 0, 0, 1, 1}, {0, 0, 0, 0, 1, 1, 1, 1}};
        v8d pw[3], pc[3];
        for (int a = 0; a < 3; ++a) pw[a] = (double)cr.lo[a] + (double)cr.size * bit[a] - p.t[a];
        for (int a = 0; a < 3; ++a) pc[a] = p.R[a] * pw[0] + p.R[3 + a] * pw[1] + p.R[6 + a] * pw[2];
        const v8d z = pc[2];
        const v8d zc = z < 1e-9 ? (v8d{} + 1e-9) : z;                   // std::max(z, 1e-9)
        const v8d uu = (p.K[0] * pc[0] + p.K[1] * pc[1]) / zc + p.K[2];
        const v8d vv = p.K[3] * pc[1] / zc + p.K[4];
        // Min / max over the corners by halving (exact, and in any order for non-NaN values).
        auto hmin = [](v8d x) {
            typedef int64_t v8l __attribute__((vector_size(64)));
            v8d y = __builtin_shuffle(x, v8l{4, 5, 6, 7, 0, 1, 2, 3});
            x = y < x ? y : x;
            y = __builtin_shuffle(x, v8l{2, 3, 0, 1, 6, 7, 4, 5});
            x = y < x ? y : x;
            y = __builtin_shuffle(x, v8l{1, 0, 3, 2, 5, 4, 7, 6});
            return std::min(x[0], y[0]);
        };
        const double zmin = hmin(z), zmax = -hmin(-z), umin = hmin(uu), umax = -hmin(-uu), vmin = hmin(vv),
                     vmax = -hmin(-vv);
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
                Ray r;                              // the direction is all the octant needs
                for (int a = 0; a < 3; ++a)
                    r.d[a] = (float)(p.Minv[3 * a] * u + p.Minv[3 * a + 1] * v + p.Minv[3 * a + 2]);
                m |= (uint8_t)(1u << octant_of(r));
            }
        masks[t] = m;
    }
    // Tile of a pixel coordinate (>= 0 in a non-empty rectangle): a shift for the usual
    // power-of-two tile (an integer division costs ~25 cycles, 8 per cell here).
    const int sh = __builtin_ctz((unsigned)TS);
    const bool pow2 = (1 << sh) == TS;
    auto tile_of = [&](int x) { return pow2 ? x >> sh : x / TS; };
    std::vector<int64_t> cnt(ntiles + 1, 0);
    for (int64_t c = 0; c < n; ++c) {
        const int32_t* r = cells[c].rect;
        if (r[0] > r[1] || r[2] > r[3]) continue;
        const int x0 = tile_of(r[0]), x1 = tile_of(r[1]), y0 = tile_of(r[2]), y1 = tile_of(r[3]);
        for (int y = y0; y <= y1; ++y)
            for (int x = x0; x <= x1; ++x) cnt[y * tx + x]++;
    }
    tile_off.assign(ntiles + 1, 0);
    for (int t = 0; t < ntiles; ++t) tile_off[t + 1] = tile_off[t] + cnt[t];
    tile_cells.resize(tile_off[ntiles]);
    std::vector<int64_t> cur(tile_off.begin(), tile_off.end() - 1);
    for (int64_t c = 0; c < n; ++c) {
        const int32_t* r = cells[c].rect;
        if (r[0] > r[1] || r[2] > r[3]) continue;
        const int x0 = tile_of(r[0]), x1 = tile_of(r[1]), y0 = tile_of(r[2]), y1 = tile_of(r[3]);
        for (int y = y0; y <= y1; ++y)
            for (int x = x0; x <= x1; ++x) tile_cells[cur[y * tx + x]++] = (int32_t)c;
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
        TileSoA s(TS);
        int64_t counts[2] = {0, 0};
#pragma omp for schedule(dynamic, 1) nowait
        for (int t = 0; t < ntiles; ++t) {
            const int64_t b0 = tile_off[t], nc = tile_off[t + 1] - b0;
            const int bx = (t % tx) * TS, by = (t / tx) * TS;
            const int ex = std::min(bx + TS, W), ey = std::min(by + TS, H);
            std::fill(s.oct, s.oct + s.n, -1);
            for (int v = by; v < ey; ++v)
                for (int u = bx; u < ex; ++u) {
                    const int i = (v - by) * TS + (u - bx);
                    Ray r;
                    make_ray(p, u, v, r);
                    for (int a = 0; a < 3; ++a) s.d[a][i] = r.d[a], s.inv[a][i] = r.inv[a];
                    s.dnorm[i] = r.dnorm;
                    s.oct[i] = octant_of(r);
                    s.T[i] = 1.0f;
                    for (int k = 0; k < 8; ++k) s.acc[k][i] = 0;
                    s.nofirst[i] = -1;
                    s.first[i] = -1;
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
                draw_group_fwd<FIELD, K>(p, cells, list, nc, bx, by, o, s, counts);
            }
            for (int v = by; v < ey; ++v)
                for (int u = bx; u < ex; ++u) {
                    const int i = (v - by) * TS + (u - bx);
                    const int64_t pix = (int64_t)v * W + u;
                    float* out = out_acc + 8 * pix;
                    for (int k = 0; k < 8; ++k) out[k] = s.acc[k][i];
                    const int64_t f = s.first[i];
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
                draw_group_bwd<FIELD, 0>(p, cells, entries + group_off[k], L, bx, by, o, st.data(), rays.data(),
                                         live.data(), grad_values, grad_colors);
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
