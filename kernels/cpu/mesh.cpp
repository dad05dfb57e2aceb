// Compiled CPU twin of voxmap_ros/core/marching_cubes.py (marching_cubes_blocks) applied to
// octree bricks, as voxmap_ros/core/mesh.py uses it: one padded 9x9x9 block per brick, read from
// the brick and its +x/+y/+z neighbours, meshed into a triangle soup.
//
// Plain C ABI over raw pointers, loaded with ctypes by voxmap_ros/core/native.py; no torch headers.
// Built with the other kernels (-ffp-contract=off: every float expression rounds as the torch
// reference's ops do).
//
// Input: compact copies of the bricks involved (tsdf and weight float16, colour 3 x uint8, 512
// voxels each, [z][y][x]) and, per brick to mesh, the rows of its 8 padded-block neighbours in
// those copies, column c = dx + 2 dy + 4 dz (c = 0 the brick itself, -1 = no such brick).
// Output, per triangle, in the reference's order (brick, then cell z, y, x, then the case
// table's slot): 3 corner positions (float32 metres), 3 corner colours, 3 edge keys, and the
// index of the brick in the batch. Values are bitwise those of the reference:
//   t = clamp((iso - s0) / (s1 - s0), 0, 1) in float32 (s0 at the edge's lower corner);
//   position = ((lower + 0.5), with t added along the edge's axis, in double) * voxel, to float32;
//   colour = round_half_even(c0 + (c1 - c0) * t) clamped to [0, 255];
//   key = ((x + 2^19) << 42) | ((y + 2^19) << 22) | ((z + 2^19) << 2) | axis of the lower corner.
// A sample is usable when its brick exists, its weight (float32) >= min_weight and its TSDF is
// finite; a cell is meshed when its 8 corners are usable, their values span at most max_jump
// (max - min in float32) and its configuration is not 0 or 255.
//
// Two passes with the same arguments: vx_mesh_count (triangles per brick) and vx_mesh_fill (into
// the caller's arrays, at the offsets given by the counts' exclusive prefix sum). Both are
// parallel over bricks; the result does not depend on the thread count.
#include <cmath>
#include <cstdint>
#include <cstring>

#include <omp.h>

typedef _Float16 half_t;

namespace {

constexpr int S = 9;                 // padded block edge (samples)
constexpr int C = 8;                 // cells per block edge
constexpr int BV = 512;              // voxels per brick
constexpr int64_t KEY_BIAS = int64_t(1) << 19;

struct MeshTables {                  // mirrors _MeshTables in native.py (all int32)
    const int32_t* tri_table;        // (256, 5, 3) edge ids, -1 padded
    const int32_t* tri_count;        // (256,)
    const int32_t* edge_corners;     // (12, 2) lower, upper corner
    const int32_t* edge_axis;        // (12,)
    const int32_t* edge_lower;       // (12, 3) cell-relative (x, y, z) of the lower corner
};

struct MeshArgs {                    // mirrors _MeshArgs in native.py
    float iso;
    float min_weight;
    float max_jump;                  // largest spread of a cell's 8 corner values that is meshed (inf: any)
    double voxel;
};

struct Block {
    float sdf[S * S * S];
    uint8_t ok[S * S * S];
    uint8_t col[S * S * S * 3];
};

// The padded block of brick b: samples (z, y, x) in 0..8, those with a coordinate of 8 taken from
// the neighbour on that side (its sample 0 along that axis). Filled region by region (one per
// neighbour) with contiguous x runs, which the compiler vectorises.
void build_block(int64_t b, const int64_t* nb, const half_t* tsdf, const half_t* weight, const uint8_t* color,
                 const MeshArgs& a, Block& blk) {
    for (int code = 0; code < 8; ++code) {
        const int dx = code & 1, dy = (code >> 1) & 1, dz = (code >> 2) & 1;
        const int64_t row = nb[b * 8 + code];
        const int z0 = dz ? C : 0, z1 = dz ? S : C, y0 = dy ? C : 0, y1 = dy ? S : C;
        const int x0 = dx ? C : 0, nx = dx ? 1 : C;
        for (int z = z0; z < z1; ++z)
            for (int y = y0; y < y1; ++y) {
                const int i0 = (z * S + y) * S + x0;
                float* sd = blk.sdf + i0;
                uint8_t* ok = blk.ok + i0;
                uint8_t* col = blk.col + 3 * i0;
                if (row < 0) {
                    for (int x = 0; x < nx; ++x) { sd[x] = 1.0f; ok[x] = 0; }
                    std::memset(col, 0, 3 * nx);
                    continue;
                }
                const int64_t v0 = row * BV + ((z - z0) * C + (y - y0)) * C;
                const half_t* ts = tsdf + v0;
                const half_t* ws = weight + v0;
                for (int x = 0; x < nx; ++x) {
                    const float s = float(ts[x]);
                    sd[x] = s;
                    ok[x] = (float(ws[x]) >= a.min_weight) & (std::fabs(s) <= 3.4e38f);   // finite
                }
                if (color) std::memcpy(col, color + 3 * v0, 3 * nx);
                else std::memset(col, 0, 3 * nx);
            }
    }
}

inline int corner_index(int k, int j, int i, int corner) {
    return ((k + ((corner >> 2) & 1)) * S + (j + ((corner >> 1) & 1))) * S + (i + (corner & 1));
}

// Configurations of the 8 cells of row (k, j): cfg[i] = case index, or 0 when the cell yields no
// triangle (a corner unusable, or all corners on one side).
inline void row_configs(const Block& blk, const uint8_t* inside, int k, int j, float max_jump, uint8_t* cfg) {
    const int r00 = (k * S + j) * S, r01 = (k * S + j + 1) * S, r10 = ((k + 1) * S + j) * S,
              r11 = ((k + 1) * S + j + 1) * S;
    for (int i = 0; i < C; ++i) {
        const uint8_t okc = blk.ok[r00 + i] & blk.ok[r00 + i + 1] & blk.ok[r01 + i] & blk.ok[r01 + i + 1] &
                            blk.ok[r10 + i] & blk.ok[r10 + i + 1] & blk.ok[r11 + i] & blk.ok[r11 + i + 1];
        const uint8_t c = uint8_t(inside[r00 + i] | (inside[r00 + i + 1] << 1) | (inside[r01 + i] << 2) |
                                  (inside[r01 + i + 1] << 3) | (inside[r10 + i] << 4) | (inside[r10 + i + 1] << 5) |
                                  (inside[r11 + i] << 6) | (inside[r11 + i + 1] << 7));
        bool smooth = true;
        if (max_jump < INFINITY) {           // loop-invariant: no cost when the limit is off
            const float* s = blk.sdf;
            const float hi = std::fmax(std::fmax(std::fmax(s[r00 + i], s[r00 + i + 1]), std::fmax(s[r01 + i], s[r01 + i + 1])),
                                       std::fmax(std::fmax(s[r10 + i], s[r10 + i + 1]), std::fmax(s[r11 + i], s[r11 + i + 1])));
            const float lo = std::fmin(std::fmin(std::fmin(s[r00 + i], s[r00 + i + 1]), std::fmin(s[r01 + i], s[r01 + i + 1])),
                                       std::fmin(std::fmin(s[r10 + i], s[r10 + i + 1]), std::fmin(s[r11 + i], s[r11 + i + 1])));
            smooth = (hi - lo) <= max_jump;
        }
        cfg[i] = (okc && smooth && c != 255) ? c : 0;
    }
}

inline void inside_flags(const Block& blk, float iso, uint8_t* inside) {
    for (int i = 0; i < S * S * S; ++i) inside[i] = blk.sdf[i] < iso;
}

inline int64_t edge_key(int64_t x, int64_t y, int64_t z, int64_t axis) {
    return ((x + KEY_BIAS) << 42) | ((y + KEY_BIAS) << 22) | ((z + KEY_BIAS) << 2) | axis;
}

}  // namespace

extern "C" {

// out[n] = brick slots[n] holds a voxel with TSDF < iso and weight >= min_weight (the test that a
// padded block can produce a triangle at all, core.mesh.may_have_surface).
void vx_bricks_negative(const int64_t* slots, int64_t N, const half_t* tsdf, const half_t* weight,
                        const MeshArgs* a, uint8_t* out, int nthreads) {
#pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t n = 0; n < N; ++n) {
        const half_t* ts = tsdf + slots[n] * BV;
        const half_t* ws = weight + slots[n] * BV;
        uint8_t any = 0;
        for (int v = 0; v < BV; ++v) any |= (float(ts[v]) < a->iso) & (float(ws[v]) >= a->min_weight);
        out[n] = any;
    }
}

// Triangles per brick into counts (B,); returns the total.
int64_t vx_mesh_count(int64_t B, const int64_t* nb, const half_t* tsdf, const half_t* weight,
                      const MeshTables* tab, const MeshArgs* a, int64_t* counts, int nthreads) {
    int64_t total = 0;
#pragma omp parallel num_threads(nthreads) reduction(+ : total)
    {
        Block* blk = new Block;
#pragma omp for schedule(dynamic, 16)
        for (int64_t b = 0; b < B; ++b) {
            build_block(b, nb, tsdf, weight, nullptr, *a, *blk);
            uint8_t inside[S * S * S], cfg[C];
            inside_flags(*blk, a->iso, inside);
            int64_t n = 0;
            for (int k = 0; k < C; ++k)
                for (int j = 0; j < C; ++j) {
                    row_configs(*blk, inside, k, j, a->max_jump, cfg);
                    for (int i = 0; i < C; ++i) n += tab->tri_count[cfg[i]];
                }
            counts[b] = n;
            total += n;
        }
        delete blk;
    }
    return total;
}

// Fill the triangle soup: verts (T, 3, 3) float32, cols (T, 3, 3) uint8, keys (T, 3) int64,
// tri_block (T,) int64, brick b's triangles starting at offsets[b]. origins (B, 3) int64: global
// voxel index (x, y, z) of each brick's sample (0, 0, 0).
void vx_mesh_fill(int64_t B, const int64_t* nb, const half_t* tsdf, const half_t* weight, const uint8_t* color,
                  const int64_t* origins, const MeshTables* tab, const MeshArgs* a, const int64_t* offsets,
                  float* verts, uint8_t* cols, int64_t* keys, int64_t* tri_block, int nthreads) {
#pragma omp parallel num_threads(nthreads)
    {
        Block* blk = new Block;
#pragma omp for schedule(dynamic, 16)
        for (int64_t b = 0; b < B; ++b) {
            build_block(b, nb, tsdf, weight, color, *a, *blk);
            int64_t t = offsets[b];
            const int64_t ox = origins[3 * b], oy = origins[3 * b + 1], oz = origins[3 * b + 2];
            uint8_t inside[S * S * S], cfgs[C];
            inside_flags(*blk, a->iso, inside);
            for (int k = 0; k < C; ++k)
                for (int j = 0; j < C; ++j) {
                    row_configs(*blk, inside, k, j, a->max_jump, cfgs);
                    for (int i = 0; i < C; ++i) {
                        const int cfg = cfgs[i];
                        if (cfg == 0) continue;
                        for (int slot = 0; slot < tab->tri_count[cfg]; ++slot, ++t) {
                            tri_block[t] = b;
                            for (int q = 0; q < 3; ++q) {
                                const int e = tab->tri_table[(cfg * 5 + slot) * 3 + q];
                                const int axis = tab->edge_axis[e];
                                const int s0i = corner_index(k, j, i, tab->edge_corners[2 * e]);
                                const int s1i = corner_index(k, j, i, tab->edge_corners[2 * e + 1]);
                                const float s0 = blk->sdf[s0i], s1 = blk->sdf[s1i];
                                float tt = (a->iso - s0) / (s1 - s0);
                                tt = tt < 0.0f ? 0.0f : (tt > 1.0f ? 1.0f : tt);
                                const int64_t lx = ox + i + tab->edge_lower[3 * e];
                                const int64_t ly = oy + j + tab->edge_lower[3 * e + 1];
                                const int64_t lz = oz + k + tab->edge_lower[3 * e + 2];
                                double p[3] = {double(lx) + 0.5, double(ly) + 0.5, double(lz) + 0.5};
                                p[axis] += double(tt);
                                float* v = verts + (t * 3 + q) * 3;
                                uint8_t* c = cols + (t * 3 + q) * 3;
                                for (int d = 0; d < 3; ++d) {
                                    v[d] = float(p[d] * a->voxel);
                                    const float c0 = blk->col[3 * s0i + d], c1 = blk->col[3 * s1i + d];
                                    float cv = std::nearbyint(c0 + (c1 - c0) * tt);
                                    cv = cv < 0.0f ? 0.0f : (cv > 255.0f ? 255.0f : cv);
                                    c[d] = uint8_t(cv);
                                }
                                keys[t * 3 + q] = edge_key(lx, ly, lz, axis);
                            }
                        }
                    }
                }
        }
        delete blk;
    }
}

}  // extern "C"
