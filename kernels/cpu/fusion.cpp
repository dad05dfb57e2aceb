// Compiled CPU twins of voxmap_ros/core/integrate.py (integrate_rgbd_torch, integrate_lidar_torch).
//
// Plain C ABI over raw pointers (loaded with ctypes by voxmap_ros/core/native.py); no torch headers.
// Build (native.py does it): g++ -std=c++17 -O3 -march=native -fopenmp -ffp-contract=off
//   -fno-trapping-math -fno-math-errno -fPIC -shared. None of these flags changes a float result.
//
// Exactness: every float expression is written in the order the torch reference evaluates it, in
// float32, one rounding per torch op (hence -ffp-contract=off). Two details follow torch's CPU
// kernels as measured: a (N,3)@(3,3) matmul is ((a0*b0 + a1*b1) + a2*b2) without FMA (MKL's small
// kernel), and torch.norm over 3 values is sqrt(fma(z, z, fma(y, y, x*x))). Python scalars meet
// float32 tensors as float32 (torch's wrapped-number promotion), so every parameter is passed here
// as float32 already rounded the same way, except where the reference computes in double first.
//
// Memory model: a context (vx_ctx_new) owns all scratch, reused across calls; it is not
// thread-safe (the Python wrapper holds a lock). Parallel loops use OpenMP with `nthreads`; the
// results do not depend on the thread count (integer counts are order-free, float sums are serial).
//
// Layout of the work:
//   RGB-D: vx_rgbd_band (unique band bricks) -> vx_rgbd_clearing (alive bricks in front of the
//          surface) -> caller allocates the band bricks -> vx_rgbd_update (projective update).
//   LiDAR: vx_lidar_trace (rays, exact free-space traversal, band and hit voxels, per-voxel cells)
//          -> caller allocates the touched bricks -> vx_lidar_apply (writes the attributes).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <new>
#include <vector>

#include <omp.h>
#include <sys/mman.h>
#include <sched.h>
#if defined(__F16C__) && defined(__AVX__)
#include <immintrin.h>
#endif

#include "team.h"

typedef _Float16 half_t;

namespace {

constexpr int BRICK = 8;
constexpr int BRICK_VOX = 512;
constexpr int NEAR_BRICKS = 27;                  // 3x3x3 bricks around the LiDAR origin
constexpr int64_t COORD_LIMIT = int64_t(1) << 20;        // packed keys hold 21 bits per axis
constexpr uint64_t EMPTY_KEY = ~uint64_t(0);

enum : int {
    VX_OK = 0,
    VX_ERR_RANGE = -1,      // a brick coordinate does not fit the packed key
    VX_ERR_STATE = -2,      // phase 2 called without a matching phase 1
    VX_ERR_ALLOC = -3,
};

// LiDAR per-voxel cell: bits 0..29 count the rays whose free samples touched the voxel, bit 30 =
// in some ray's truncation band, bit 31 = holds a return.
// Once the band pass reaches a voxel its cell is rewritten as: bit 30 set, bit 29 = had free
// samples, bits 0..28 = index of its band accumulator.
constexpr uint32_t C_COUNT = (1u << 30) - 1, C_BAND = 1u << 30, C_HIT = 1u << 31;
constexpr uint32_t C_BAND_FREE = 1u << 29, C_BAND_INDEX = (1u << 29) - 1;

inline uint64_t pack_key(int64_t x, int64_t y, int64_t z) {
    return (uint64_t(x + COORD_LIMIT) << 42) | (uint64_t(y + COORD_LIMIT) << 21) | uint64_t(z + COORD_LIMIT);
}
inline bool coord_ok(int64_t x, int64_t y, int64_t z) {
    return x >= -COORD_LIMIT && x < COORD_LIMIT && y >= -COORD_LIMIT && y < COORD_LIMIT &&
           z >= -COORD_LIMIT && z < COORD_LIMIT;
}
inline uint64_t mix(uint64_t k) {
    k ^= k >> 31;
    k *= 0x9E3779B97F4A7C15ull;
    k ^= k >> 29;
    return k;
}

// floor(a) of a float32 to int64, as torch.floor(x).long() for finite in-range values; NaN and
// huge values map far outside the representable brick range (coord_ok rejects them).
inline int64_t ifloor(float a) {
    const float f = std::floor(a);
    return (f > -1e15f && f < 1e15f) ? (int64_t)f : (int64_t(1) << 50);
}

// ------------------------------------------------------------------------------------------------
// Whether Linux may back madvise(MADV_HUGEPAGE) memory with transparent huge pages.
inline bool huge_pages_on() {
    static const bool on = [] {
        FILE* f = std::fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
        if (!f) return false;
        char buf[128] = {0};
        const size_t n = std::fread(buf, 1, sizeof(buf) - 1, f);
        std::fclose(f);
        return n > 0 && std::strstr(buf, "[never]") == nullptr;
    }();
    return on;
}

// A zero-initialised array that grows by mapping fresh anonymous memory instead of std::vector's
// copy and zero fill. With transparent huge pages it is committed lazily, 2 MB per fault, which
// made the scan that outgrew the LiDAR brick set 40-60 ms cheaper (64 MB of cells); without them
// it is committed up front, as before (scattered 4 KB faults during the walk cost more). Only for
// contents that are all zero (or no longer needed) when it grows.
template <typename T>
struct ZeroedArray {
    T* ptr = nullptr;
    size_t n = 0, bytes = 0;
    ZeroedArray() = default;
    ZeroedArray(const ZeroedArray&) = delete;
    ZeroedArray& operator=(const ZeroedArray&) = delete;
    ~ZeroedArray() { release(); }
    size_t size() const { return n; }
    T* data() { return ptr; }
    T& operator[](size_t i) { return ptr[i]; }
    void release() {
        if (ptr) munmap(ptr, bytes);
        ptr = nullptr;
        n = bytes = 0;
    }
    void grow_zeroed(size_t want) {
        if (want <= n) return;
        const size_t huge = size_t(2) << 20;
        const size_t b = (want * sizeof(T) + huge - 1) / huge * huge;
        void* p = mmap(nullptr, b, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) throw std::bad_alloc();
        bool lazy = false;
#ifdef MADV_HUGEPAGE
        lazy = huge_pages_on() && madvise(p, b, MADV_HUGEPAGE) == 0;
#endif
        if (!lazy) std::memset(p, 0, b);      // commit now, not page by page inside the walk
        release();
        ptr = static_cast<T*>(p);
        n = want;
        bytes = b;
    }
};

// ------------------------------------------------------------------------------------------------
// Concurrent insert-only set of brick coordinates -> dense index (0, 1, 2, ... in claim order).
// Optionally every index owns a block of 512 uint32 per-voxel cells and a 512-bit mask of the cells
// in use. Masks are zeroed when an index is claimed; cells stay zero between uses instead (the
// consumer zeroes the cells it read, so a claim costs 64 bytes of memset, not 2 KB), and a run that
// ends without its consumer leaves them dirty, to be scrubbed before the next run.
struct BrickSet {
    int bits = 0;
    uint64_t mask = 0;
    std::vector<std::atomic<uint64_t>> keys;
    std::vector<std::atomic<int32_t>> vals;
    std::vector<int32_t> coords;          // 3 per index
    ZeroedArray<uint32_t> cells;          // BRICK_VOX per index when with_cells
    ZeroedArray<uint64_t> masks;          // BRICK_VOX / 64 per index when with_cells
    bool cells_dirty = false;             // cells of the last run may be non-zero
    std::atomic<int32_t> count{0};
    std::atomic<int> overflow{0};
    std::atomic<int> range_error{0};
    int32_t max_items = 0;
    bool with_cells = false;

    void reset(int new_bits, bool cells_on) {
        const size_t cells_needed = cells_on ? (size_t(1) << new_bits) / 2 * BRICK_VOX : 0;
        if (cells_dirty && cells_needed > cells.size()) {
            cells.release();              // replaced by fresh zero pages below: no scrub needed
            cells_dirty = false;
        }
        if (cells_dirty) {                // scrub what the previous run may have left
            const size_t used = size_t(std::min(count.load(), max_items));
            std::memset(cells.data(), 0, used * BRICK_VOX * sizeof(uint32_t));
            cells_dirty = false;
        }
        // After an overflow, slots claimed past max_items hold keys without coordinates, which
        // clear_used cannot find: start from an empty table then.
        if (new_bits != bits || keys.empty() || overflow.load()) {
            bits = new_bits;
            mask = (uint64_t(1) << bits) - 1;
            keys = std::vector<std::atomic<uint64_t>>(size_t(1) << bits);
            vals = std::vector<std::atomic<int32_t>>(size_t(1) << bits);
            for (auto& k : keys) k.store(EMPTY_KEY, std::memory_order_relaxed);
            for (auto& v : vals) v.store(-1, std::memory_order_relaxed);
            max_items = int32_t((size_t(1) << bits) / 2);
            coords.assign(size_t(max_items) * 3, 0);
        } else {
            clear_used();
        }
        with_cells = cells_on;
        if (with_cells) {       // cells are all zero here (scrubbed above); masks are reset per claim
            cells.grow_zeroed(size_t(max_items) * BRICK_VOX);
            masks.grow_zeroed(size_t(max_items) * (BRICK_VOX / 64));
        }
        cells_dirty = with_cells;
        count.store(0);
        overflow.store(0);
        range_error.store(0);
    }

    // Empty the slots used by the last run (cheaper than refilling the whole table).
    void clear_used() {
        int32_t n = std::min(count.load(), max_items);
        for (int32_t i = 0; i < n; ++i) {
            uint64_t h = mix(pack_key(coords[3 * i], coords[3 * i + 1], coords[3 * i + 2])) & mask;
            // Linear probing: clear every slot of the chain; a cleared run can only hold keys of this
            // run, which are all cleared by this loop (all keys were inserted in this run).
            while (keys[h].load(std::memory_order_relaxed) != EMPTY_KEY) {
                keys[h].store(EMPTY_KEY, std::memory_order_relaxed);
                vals[h].store(-1, std::memory_order_relaxed);
                h = (h + 1) & mask;
            }
        }
    }

    // Index of brick (x, y, z), inserting it if absent. -1 on overflow or range error.
    int32_t insert(int64_t x, int64_t y, int64_t z) {
        if (!coord_ok(x, y, z)) {
            range_error.store(1, std::memory_order_relaxed);
            return -1;
        }
        const uint64_t key = pack_key(x, y, z);
        uint64_t h = mix(key) & mask;
        for (;;) {
            uint64_t k = keys[h].load(std::memory_order_acquire);
            if (k == key) {
                int32_t v;
                int spins = 0;
                while ((v = vals[h].load(std::memory_order_acquire)) < 0) {
                    if (v == -2) return -1;       // claimed by an insert that overflowed
                    if (++spins > 64) sched_yield();    // the claimer may have been preempted
                }
                return v;
            }
            if (k == EMPTY_KEY) {
                // Full (max_items is half the slots): say so without claiming a slot, so the table
                // never fills up and every probe ends at an empty slot. Threads racing past this
                // check claim at most one slot each beyond max_items (handled below).
                if (count.load(std::memory_order_relaxed) >= max_items) {
                    overflow.store(1, std::memory_order_relaxed);
                    return -1;
                }
                uint64_t expected = EMPTY_KEY;
                // Claim the slot; the value becomes visible once published below.
                if (keys[h].compare_exchange_strong(expected, key, std::memory_order_acq_rel)) {
                    int32_t i = count.fetch_add(1, std::memory_order_relaxed);
                    if (i >= max_items) {
                        overflow.store(1, std::memory_order_relaxed);
                        vals[h].store(-2, std::memory_order_release);
                        return -1;
                    }
                    coords[3 * i] = int32_t(x);
                    coords[3 * i + 1] = int32_t(y);
                    coords[3 * i + 2] = int32_t(z);
                    if (with_cells) std::memset(&masks[size_t(i) * (BRICK_VOX / 64)], 0, BRICK_VOX / 8);
                    vals[h].store(i, std::memory_order_release);
                    return i;
                }
                continue;   // lost the race: re-read this slot
            }
            h = (h + 1) & mask;
        }
    }

    int32_t size() const { return std::min(count.load(), max_items); }
};

// float16 <-> float32 for a block of n (multiple of 8) values; round to nearest even like torch.
inline void half_to_float(const half_t* __restrict in, float* __restrict out, int n) {
#if defined(__F16C__) && defined(__AVX__)
    for (int i = 0; i < n; i += 8)
        _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i))));
#else
    for (int i = 0; i < n; ++i) out[i] = float(in[i]);
#endif
}
inline void float_to_half(const float* __restrict in, half_t* __restrict out, int n) {
#if defined(__F16C__) && defined(__AVX__)
    for (int i = 0; i < n; i += 8)
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(in + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#else
    for (int i = 0; i < n; ++i) out[i] = half_t(in[i]);
#endif
}

struct Pose {           // float32 copies of T[:3, :3] and T[:3, 3], as `.float()` gives them
    float R[9];
    float t[3];
};

inline Pose make_pose(const double* T12) {
    Pose p;
    for (int r = 0; r < 3; ++r) {
        for (int c = 0; c < 3; ++c) p.R[3 * r + c] = float(T12[4 * r + c]);
        p.t[r] = float(T12[4 * r + 3]);
    }
    return p;
}

}  // namespace

struct BandSums {        // LiDAR band accumulators of one thread: sample count and sum of obs
    std::vector<float> w, wt;
};

struct BandEntry {       // one LiDAR band sample (obs in [-1, 1]) or a hit (obs = +inf) of a voxel
    uint32_t code;      // brick index * 512 + voxel
    float obs;
};

// ------------------------------------------------------------------------------------------------
struct VxContext {
    BrickSet set;
    // rgbd
    std::vector<int64_t> clearing;        // slots found by vx_rgbd_clearing
    std::vector<int64_t> visited;         // sorted union of band slots and clearing slots
    // lidar
    bool lidar_ready = false;
    std::vector<float> dirs;              // 3 per ray
    std::vector<float> ranges;
    std::vector<uint8_t> hit;
    std::vector<uint64_t> ray_order;      // rays grouped by direction (low 32 bits: the ray)
    std::vector<uint32_t> ray_key;        // scratch: each ray's direction group
    int64_t n_touched = 0;                // voxels updated by the last vx_lidar_apply
    double t_start = 0;
    double t_phase[4] = {0, 0, 0, 0};     // wall-clock marks of the last trace (rays, free, band) and apply
    double t_walk = 0;                    // end of the last free-space walk (before its counting)
    double t_band_list = 0;               // end of the band pass's parallel listing (before its merge)
    std::vector<BandSums> band_acc;       // per thread: the band sums of its bricks' voxels
    std::vector<float> band_w, band_wt;   // all of them, at the index the voxel's cell holds
    int64_t n_band = 0;                   // band voxels of the last trace
    std::vector<int64_t> lidar_slots;
    std::vector<uint64_t> slot_bits;      // scratch of sorted_distinct
    std::vector<std::vector<uint32_t>> thread_codes;   // free-space voxel codes, [lister * nt + owner]
    std::vector<size_t> thread_used;                   // codes written to each of those buckets
    std::vector<std::vector<BandEntry>> band_entries;  // band samples and hits listed per chunk of rays
};

struct RgbdParams {     // all float32 as the reference's tensor ops see them
    float fx, fy, cx, cy;
    float voxel, brick, trunc, half_voxel;
    float brick_clear;  // float32(octree.brick_size_m), for clearing
    float dmin, dmax;
    float max_weight;
    float l_hit, l_miss, l_min, l_max;
    float radius;       // float32(sqrt(3) / 2 * brick_size), for clearing
    float pixel_round;  // added before floor() when a voxel picks its pixel: 0.5 nearest, 0 floor
    int depth_weighting;
    int n_band;         // samples per pixel across the band (rgbd_band_fractions), >= 5
};

struct NodeSummaries {    // where vx_lidar_apply writes the brick summaries (octree node pools)
    const int32_t* brick_node;
    float* max_occ;
    float* min_abs_tsdf;
    uint8_t* observed;
};

struct LidarParams {
    float voxel, step, trunc;
    float rmin, rmax;
    float max_weight;
    float l_hit, l_miss, l_min, l_max;
    int n_band;         // floor(2 * trunc / step + 1e-6) + 1, computed in double by the caller
    int free_space;
};


namespace {

// Step (3) of vx_rgbd_update for one brick, branch-free so that it vectorizes: new TSDF / weight /
// occupancy in tw / ww / ow (unchanged where okv is 0), plus w_old, w_obs and the colour mask.
template <bool DEPTH_WEIGHTING>
void tsdf_occ_block(const int32_t* __restrict okv, const float* __restrict dd, const float* __restrict zz,
                    float* __restrict tw, float* __restrict ww, float* __restrict ow, float* __restrict wo,
                    float* __restrict wn, int32_t* __restrict nearv, const RgbdParams& p) {
    const float trunc = p.trunc, maxw = p.max_weight, half_vox = p.half_voxel, vs = p.voxel;
    const float l_hit = p.l_hit, l_miss = p.l_miss, l_min = p.l_min, l_max = p.l_max;
    for (int lin = 0; lin < BRICK_VOX; ++lin) {
        const bool ok = okv[lin] != 0;
        const float d = dd[lin];
        const float sdf = d - zz[lin];
        float obs = sdf / trunc;
        obs = obs < -1.0f ? -1.0f : (obs > 1.0f ? 1.0f : obs);
        float w_obs = 1.0f;
        if constexpr (DEPTH_WEIGHTING) {
            const float dc = d < 1.0f ? 1.0f : d;
            w_obs = 1.0f / (dc * dc);
        }
        const float w_old = ww[lin], t_old = tw[lin];
        const float w_sum = w_old + w_obs;
        const float t_new = (t_old * w_old + obs * w_obs) / w_sum;
        tw[lin] = ok ? t_new : t_old;
        ww[lin] = ok ? (w_sum < maxw ? w_sum : maxw) : w_old;
        wo[lin] = w_old;
        wn[lin] = w_obs;
        const float asdf = std::fabs(sdf);
        nearv[lin] = ok & (asdf < trunc);
        const float miss = sdf > vs ? l_miss : 0.0f;
        const float dh = asdf <= half_vox ? l_hit : miss;
        const float delta = ok ? dh : 0.0f;
        const float o_old = ow[lin];
        const float o = o_old + delta;
        const float oc = o < l_min ? l_min : (o > l_max ? l_max : o);
        ow[lin] = delta != 0.0f ? oc : o_old;
    }
}

}  // namespace

// out = the distinct values of v (n,) >= 0, ascending, through a bitmap up to max(v): O(n + max / 64),
// where std::sort took 355 us for 8k slots below 300k (bitmap 54 us, -O3, this VM). bits is scratch.
inline void sorted_distinct(const int64_t* v, int64_t n, std::vector<uint64_t>& bits, std::vector<int64_t>& out) {
    out.clear();
    if (n <= 0) return;
    int64_t hi = 0;
    for (int64_t i = 0; i < n; ++i) hi = std::max(hi, v[i]);
    const size_t words = size_t(hi / 64) + 1;
    bits.assign(words, 0);
    for (int64_t i = 0; i < n; ++i) bits[size_t(v[i] / 64)] |= uint64_t(1) << (v[i] % 64);
    for (size_t w = 0; w < words; ++w)
        for (uint64_t b = bits[w]; b; b &= b - 1) out.push_back(int64_t(w) * 64 + __builtin_ctzll(b));
}

// A std::bad_alloc must not cross the C ABI (ctypes would abort the process): the heavy entry
// points return VX_ERR_ALLOC instead. (Allocations inside OpenMP regions are not covered.)
template <typename F>
int64_t guarded(F&& f) {
    try {
        return f();
    } catch (const std::bad_alloc&) {
        return VX_ERR_ALLOC;
    }
}

extern "C" {

int vx_abi_version() { return 1; }

VxContext* vx_ctx_new() {
    try {
        return new VxContext();
    } catch (...) {
        return nullptr;
    }
}

void vx_ctx_free(VxContext* ctx) { delete ctx; }

// Copy the brick coordinates found by the last band / trace call: out (M, 3) int64.
void vx_copy_bricks(const VxContext* ctx, int64_t* out) {
    const int32_t n = ctx->set.size();
    for (int32_t i = 0; i < 3 * n; ++i) out[i] = ctx->set.coords[i];
}

// ----------------------------------------------------------------------------------------- summaries
namespace {

// Bricks sit at scattered slots of the pools, 1 KB per attribute: a loop over bricks asks for the
// one this many places ahead (48 cache lines) so that its memory latency overlaps the work.
constexpr int64_t PREFETCH_BRICKS = 4;
// How many codes ahead the LiDAR counting prefetches its cell: the cells (2 KB per brick, ~16 MB
// a scan) come from memory, and 16 ahead hid too little of that latency (counting 1.28 -> 0.86 ms
// per scan at 160; 320 was no better).
constexpr size_t COUNT_PREFETCH = 160;
constexpr int64_t BAND_CHUNK_RAYS = 256;   // rays per list of the LiDAR band pass

inline void prefetch_brick(int64_t s, const half_t* tsdf_a, const half_t* w_a, const half_t* occ_a) {
    for (int off = 0; off < BRICK_VOX; off += 32) {        // 32 halves per 64-byte line
        __builtin_prefetch(tsdf_a + s * BRICK_VOX + off, 1);
        __builtin_prefetch(w_a + s * BRICK_VOX + off, 1);
        __builtin_prefetch(occ_a + s * BRICK_VOX + off, 1);
    }
}

// TSDF, weight and occupancy of brick slot s as float32.
inline void load_brick(int64_t s, const half_t* tsdf_a, const half_t* w_a, const half_t* occ_a, float* tw, float* ww,
                       float* ow) {
    half_to_float(tsdf_a + s * BRICK_VOX, tw, BRICK_VOX);
    half_to_float(w_a + s * BRICK_VOX, ww, BRICK_VOX);
    half_to_float(occ_a + s * BRICK_VOX, ow, BRICK_VOX);
}

// Summary of brick slot s (brick_summaries_torch): max occupancy over seen voxels (w > 0 or
// occ != 0; -inf if none), min |tsdf| over w > 0 (1 if none), and whether any voxel was seen.
inline void brick_summary(int64_t s, const half_t* tsdf_a, const half_t* w_a, const half_t* occ_a, float* max_occ,
                          float* min_abs_tsdf, uint8_t* observed) {
    const half_t* ts = tsdf_a + s * BRICK_VOX;
    const half_t* ws = w_a + s * BRICK_VOX;
    const half_t* os = occ_a + s * BRICK_VOX;
    float mo = -INFINITY, mt = 1.0f;
    int seen_any = 0;
#if defined(__F16C__) && defined(__AVX__)
    // Eight voxels per step straight from the halves (the compiler's version of the loop below
    // spilled its lane arrays and ran ~5x slower). max_ps(a, b) is a > b ? a : b, min_ps a < b ? a : b.
    const __m256 neg_inf = _mm256_set1_ps(-INFINITY), one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    __m256 mo8 = neg_inf, mt8 = one, seen8 = zero;
    for (int i = 0; i < BRICK_VOX; i += 8) {
        const __m256 t = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(ts + i)));
        const __m256 w = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(ws + i)));
        const __m256 o = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(os + i)));
        const __m256 weighted = _mm256_cmp_ps(w, zero, _CMP_GT_OQ);
        const __m256 seen = _mm256_or_ps(weighted, _mm256_cmp_ps(o, zero, _CMP_NEQ_UQ));
        mo8 = _mm256_max_ps(mo8, _mm256_blendv_ps(neg_inf, o, seen));
        mt8 = _mm256_min_ps(mt8, _mm256_blendv_ps(one, _mm256_and_ps(t, abs_mask), weighted));
        seen8 = _mm256_or_ps(seen8, seen);
    }
    alignas(32) float mo_l[8], mt_l[8];
    _mm256_store_ps(mo_l, mo8);
    _mm256_store_ps(mt_l, mt8);
    for (int j = 0; j < 8; ++j) {
        mo = std::max(mo, mo_l[j]);
        mt = std::min(mt, mt_l[j]);
    }
    seen_any = _mm256_movemask_ps(seen8) != 0;
#else
    for (int lin = 0; lin < BRICK_VOX; ++lin) {
        const float w = float(ws[lin]), o = float(os[lin]);
        const bool weighted = w > 0.0f;
        const bool seen = weighted | (o != 0.0f);
        if (seen) mo = std::max(mo, o);
        if (weighted) mt = std::min(mt, std::fabs(float(ts[lin])));
        seen_any |= int(seen);
    }
#endif
    *max_occ = mo;
    *min_abs_tsdf = mt;
    *observed = seen_any ? 1 : 0;
}

}  // namespace

// ----------------------------------------------------------------------------------------- RGB-D
// Unique brick coordinates of the truncation band (rgbd_band_brick_coords). depth (H, W) float32.
// Returns M >= 0 (fetch with vx_copy_bricks) or a negative error.
static int64_t rgbd_band(VxContext* ctx, const float* depth, int64_t H, int64_t W, const double* T12,
                     const RgbdParams* p, int nthreads) {
    ctx->lidar_ready = false;                     // the brick set is reused below
    const Pose P = make_pose(T12);
    // -1 .. 1 in n_band steps, rounded to float from double exactly as the reference's fractions.
    const int n_band = p->n_band;
    std::vector<float> steps(n_band);
    for (int j = 0; j < n_band; ++j) steps[j] = float(-1.0 + 2.0 * j / (n_band - 1)) * p->trunc;
    // x = (u - cx) / fx per column and y per row, exactly as the reference computes them.
    std::vector<float> xs(W);
    for (int64_t u = 0; u < W; ++u) xs[u] = (float(u) - p->cx) / p->fx;
    const float dmin = p->dmin, dmax = p->dmax, brick = p->brick;
    int bits = std::max(ctx->set.bits, 14);
    for (;;) {
        ctx->set.reset(bits, false);
        BrickSet& set = ctx->set;
        const int64_t team_region_1 = vx_team::begin();
#pragma omp parallel num_threads(nthreads)
        {
            vx_team::spread(team_region_1);
            std::vector<int32_t> bufx(W), bufy(W), bufz(W);
            std::vector<uint8_t> bufc(W);
            uint8_t* __restrict ch = bufc.data();
            int32_t* __restrict bx = bufx.data();
            int32_t* __restrict by = bufy.data();
            int32_t* __restrict bz = bufz.data();
            const float* __restrict xr = xs.data();
#pragma omp for schedule(dynamic, 4)
            for (int64_t v = 0; v < H; ++v) {
                const float y = (float(v) - p->cy) / p->fy;
                const float* __restrict row = depth + v * W;
                for (int j = 0; j < n_band; ++j) {
                    const float sj = steps[j];
                    // Vectorizable: brick coordinates of sample j of every pixel of the row
                    // (INT32_MIN for invalid pixels; coordinates clamped far outside the key range
                    // when huge, so coord_ok rejects them).
                    for (int64_t u = 0; u < W; ++u) {
                        const float d = row[u];
                        const bool valid = (d >= dmin) & (d <= dmax);     // false for NaN / inf
                        const float zs = d + sj;
                        const float z = zs < 1e-3f ? 1e-3f : zs;
                        const float q0 = xr[u] * z, q1 = y * z;
                        float f0 = std::floor((((q0 * P.R[0] + q1 * P.R[1]) + z * P.R[2]) + P.t[0]) / brick);
                        float f1 = std::floor((((q0 * P.R[3] + q1 * P.R[4]) + z * P.R[5]) + P.t[1]) / brick);
                        float f2 = std::floor((((q0 * P.R[6] + q1 * P.R[7]) + z * P.R[8]) + P.t[2]) / brick);
                        f0 = f0 > -4e6f ? (f0 < 4e6f ? f0 : 4e6f) : -4e6f;
                        f1 = f1 > -4e6f ? (f1 < 4e6f ? f1 : 4e6f) : -4e6f;
                        f2 = f2 > -4e6f ? (f2 < 4e6f ? f2 : 4e6f) : -4e6f;
                        bx[u] = valid ? int32_t(f0) : INT32_MIN;
                        by[u] = int32_t(f1);
                        bz[u] = int32_t(f2);
                    }
                    // Neighbouring pixels mostly share bricks: insert only where the brick differs
                    // from the previous pixel's (found 8 pixels at a time), skipping invalid ones.
                    ch[0] = bx[0] != INT32_MIN;
                    for (int64_t u = 1; u < W; ++u)                     // vectorized
                        ch[u] = ((bx[u] != bx[u - 1]) | (by[u] != by[u - 1]) | (bz[u] != bz[u - 1])) &
                                (bx[u] != INT32_MIN);
                    int64_t u0 = 0;
                    for (; u0 + 8 <= W; u0 += 8) {
                        uint64_t word;
                        std::memcpy(&word, ch + u0, 8);
                        for (; word; word &= word - 1) {
                            const int64_t u = u0 + (__builtin_ctzll(word) >> 3);
                            set.insert(bx[u], by[u], bz[u]);
                        }
                    }
                    for (int64_t u = u0; u < W; ++u)
                        if (ch[u]) set.insert(bx[u], by[u], bz[u]);
                }
            }
        }
        if (set.range_error.load()) return VX_ERR_RANGE;
        if (!set.overflow.load()) return set.size();
        bits += 1;
    }
}

int64_t vx_rgbd_band(VxContext* ctx, const float* depth, int64_t H, int64_t W, const double* T12,
                     const RgbdParams* p, int nthreads) {
    return guarded([&] { return rgbd_band(ctx, depth, H, W, T12, p, nthreads); });
}

// Alive bricks wholly in front of the observed surface at their centre pixel
// (rgbd_clearing_slots). alive (cap,) bool, coord (cap, 3) int32. Returns their count; the slots
// are kept for vx_rgbd_update.
int64_t vx_rgbd_clearing(VxContext* ctx, const uint8_t* alive, const int32_t* coord, int64_t cap,
                         const float* depth, int64_t H, int64_t W, const double* T12, const RgbdParams* p,
                         int nthreads) {
    const Pose P = make_pose(T12);
    std::vector<int64_t>& out = ctx->clearing;
    out.clear();
    const int nt = std::max(1, nthreads);
    std::vector<std::vector<int64_t>> parts(nt);
    const int64_t team_region_2 = vx_team::begin();
#pragma omp parallel num_threads(nt)
    {
        vx_team::spread(team_region_2);
        // Filled in a thread-private vector (see used_local in lidar_trace: the vector objects of
        // `parts` share cache lines) and moved into place once.
        std::vector<int64_t> mine;
        // In blocks: a branch-free pass (vectorized) finds the alive bricks whose centre lies in
        // the depth slab (dmin, dmax) ahead of the camera, and only those are projected. Every
        // brick the full test keeps is in that slab (z < d - radius <= dmax), so the result is
        // the same as testing every brick, at a fraction of the cost on a large map.
        constexpr int64_t BLOCK = 256;
        const int64_t n_blocks = (cap + BLOCK - 1) / BLOCK;
        alignas(64) float cx_b[BLOCK], cy_b[BLOCK], cz_b[BLOCK];
        alignas(64) uint8_t slab[BLOCK];
        const float bc = p->brick_clear, dmin = p->dmin, dmax = p->dmax;
        const float t0 = P.t[0], t1 = P.t[1], t2 = P.t[2];
        const float R0 = P.R[0], R1 = P.R[1], R2 = P.R[2], R3 = P.R[3], R4 = P.R[4], R5 = P.R[5];
        const float R6 = P.R[6], R7 = P.R[7], R8 = P.R[8];
#pragma omp for schedule(static)
        for (int64_t b = 0; b < n_blocks; ++b) {
            const int64_t s0 = b * BLOCK, n = std::min(BLOCK, cap - s0);
            const int32_t* cb = coord + 3 * s0;
            for (int64_t j = 0; j < n; ++j) {
                const float q0 = (float(cb[3 * j]) + 0.5f) * bc - t0;
                const float q1 = (float(cb[3 * j + 1]) + 0.5f) * bc - t1;
                const float q2 = (float(cb[3 * j + 2]) + 0.5f) * bc - t2;
                cx_b[j] = (q0 * R0 + q1 * R3) + q2 * R6;
                cy_b[j] = (q0 * R1 + q1 * R4) + q2 * R7;
                cz_b[j] = (q0 * R2 + q1 * R5) + q2 * R8;
                slab[j] = uint8_t((alive[s0 + j] != 0) & (cz_b[j] > dmin) & (cz_b[j] < dmax));
            }
            for (int64_t j = 0; j < n; ++j) {
                if (!slab[j]) continue;
                const float z = cz_b[j];
                const float zc = std::max(z, 1e-6f);
                const float uf = std::floor(((p->fx * cx_b[j]) / zc + p->cx) + p->pixel_round);
                const float vf = std::floor(((p->fy * cy_b[j]) / zc + p->cy) + p->pixel_round);
                if (!(uf >= 0.0f && uf < float(W) && vf >= 0.0f && vf < float(H))) continue;
                const float d = depth[int64_t(vf) * W + int64_t(uf)];
                if (std::isfinite(d) && d >= dmin && d <= dmax && d > z + p->radius) mine.push_back(s0 + j);
            }
        }
        parts[omp_get_thread_num()] = std::move(mine);
    }
    for (auto& v : parts) out.insert(out.end(), v.begin(), v.end());
    return int64_t(out.size());
}

// Projective update of the voxels of the union of `band_slots` (M,) and the clearing slots
// (rgbd_update_bricks). Attribute pointers are the octree's (cap, 512[, 3]) tensors. rgb may be
// null. Returns the number of visited slots (fetch the sorted list with vx_copy_visited).
static int64_t rgbd_update(VxContext* ctx, const int64_t* band_slots, int64_t M, const int32_t* coord,
                       const float* depth, const uint8_t* rgb, int64_t H, int64_t W, const double* T12,
                       const RgbdParams* p, half_t* tsdf_a, half_t* w_a, uint8_t* col_a, half_t* occ_a,
                       const NodeSummaries* summaries, int nthreads) {
    std::vector<int64_t>& slots = ctx->visited;
    slots.assign(band_slots, band_slots + M);
    slots.insert(slots.end(), ctx->clearing.begin(), ctx->clearing.end());
    std::sort(slots.begin(), slots.end());
    slots.erase(std::unique(slots.begin(), slots.end()), slots.end());
    const int64_t n = int64_t(slots.size());
    const Pose P = make_pose(T12);
    const float fx = p->fx, fy = p->fy, cx = p->cx, cy = p->cy, vs = p->voxel, trunc = p->trunc;
    const float pr = p->pixel_round;
    const float dmin = p->dmin, dmax = p->dmax;
    const float fW = float(W), fH = float(H);
    const bool dw = p->depth_weighting != 0;
    const bool with_rgb = rgb != nullptr && col_a != nullptr;

    const int64_t team_region_3 = vx_team::begin();
#pragma omp parallel num_threads(nthreads)
    {
        vx_team::spread(team_region_3);
        // Per-voxel scratch of one brick (all loops below run over the 512 voxels of a brick).
        alignas(64) int32_t pix[BRICK_VOX];
        alignas(64) float zz[BRICK_VOX], dd[BRICK_VOX], cr[BRICK_VOX], cg[BRICK_VOX], cb[BRICK_VOX];
        alignas(64) float tw[BRICK_VOX], ww[BRICK_VOX], ow[BRICK_VOX];
        alignas(64) float wo[BRICK_VOX], wn[BRICK_VOX];
        alignas(64) int32_t okv[BRICK_VOX], nearv[BRICK_VOX];
        alignas(64) float ofs[3][BRICK_VOX];
        for (int lin = 0; lin < BRICK_VOX; ++lin) {
            ofs[0][lin] = float(lin & 7);
            ofs[1][lin] = float((lin >> 3) & 7);
            ofs[2][lin] = float(lin >> 6);
        }
#pragma omp for schedule(dynamic, 8)
        for (int64_t i = 0; i < n; ++i) {
            const int64_t s = slots[i];
            const float bx = float(coord[3 * s]) * BRICK, by = float(coord[3 * s + 1]) * BRICK,
                        bz = float(coord[3 * s + 2]) * BRICK;
            half_t* ts = tsdf_a + s * BRICK_VOX;
            half_t* ws = w_a + s * BRICK_VOX;
            half_t* os = occ_a + s * BRICK_VOX;
            uint8_t* cs = with_rgb ? col_a + s * BRICK_VOX * 3 : nullptr;
            // (1) projection of every voxel centre to its pixel (nearest, or floor(u): pixel_round).
            int any_inside = 0;
            for (int lin = 0; lin < BRICK_VOX; ++lin) {
                const float q0 = ((bx + ofs[0][lin]) + 0.5f) * vs - P.t[0];
                const float q1 = ((by + ofs[1][lin]) + 0.5f) * vs - P.t[1];
                const float q2 = ((bz + ofs[2][lin]) + 0.5f) * vs - P.t[2];
                const float c0 = (q0 * P.R[0] + q1 * P.R[3]) + q2 * P.R[6];
                const float c1 = (q0 * P.R[1] + q1 * P.R[4]) + q2 * P.R[7];
                const float z = (q0 * P.R[2] + q1 * P.R[5]) + q2 * P.R[8];
                const bool front = z > 1e-6f;
                const float zc = front ? z : 1.0f;
                const float uf = std::floor(((fx * c0) / zc + cx) + pr);
                const float vf = std::floor(((fy * c1) / zc + cy) + pr);
                const bool inside = front & (uf >= 0.0f) & (uf < fW) & (vf >= 0.0f) & (vf < fH);
                pix[lin] = inside ? int32_t(vf) * int32_t(W) + int32_t(uf) : -1;
                zz[lin] = z;
                any_inside |= int(inside);
            }
            if (!any_inside) continue;
            // (2) gather depth (and colour) at those pixels.
            for (int lin = 0; lin < BRICK_VOX; ++lin) {
                const int32_t px = pix[lin];
                dd[lin] = px >= 0 ? depth[px] : NAN;
            }
            int any_ok = 0;
            for (int lin = 0; lin < BRICK_VOX; ++lin) {
                const float d = dd[lin];
                const bool ok = (d >= dmin) & (d <= dmax) & ((d - zz[lin]) >= -trunc);   // false for NaN
                okv[lin] = ok;
                dd[lin] = ok ? d : 1.0f;         // keeps the arithmetic below finite where not ok
                any_ok |= int(ok);
            }
            if (!any_ok) continue;
            if (with_rgb) {
                for (int lin = 0; lin < BRICK_VOX; ++lin) {
                    const int32_t px = okv[lin] ? pix[lin] : 0;
                    cr[lin] = float(rgb[3 * int64_t(px)]);
                    cg[lin] = float(rgb[3 * int64_t(px) + 1]);
                    cb[lin] = float(rgb[3 * int64_t(px) + 2]);
                }
            }
            half_to_float(ts, tw, BRICK_VOX);
            half_to_float(ws, ww, BRICK_VOX);
            half_to_float(os, ow, BRICK_VOX);
            // (3) TSDF, weight, occupancy (vectorized; unchanged where not ok).
            if (dw) tsdf_occ_block<true>(okv, dd, zz, tw, ww, ow, wo, wn, nearv, *p);
            else tsdf_occ_block<false>(okv, dd, zz, tw, ww, ow, wo, wn, nearv, *p);
            // (4) colour near the surface: weighted average, rounded half up.
            if (with_rgb) {
                for (int lin = 0; lin < BRICK_VOX; ++lin) {
                    const float w_old = wo[lin], w_obs = wn[lin], w_sum = w_old + w_obs;
                    const float co[3] = {cr[lin], cg[lin], cb[lin]};
                    for (int k = 0; k < 3; ++k) {
                        const float c_old = float(cs[3 * lin + k]);
                        float c = std::floor((c_old * w_old + co[k] * w_obs) / w_sum + 0.5f);
                        c = c < 0.0f ? 0.0f : (c > 255.0f ? 255.0f : c);
                        cs[3 * lin + k] = nearv[lin] ? uint8_t(c) : cs[3 * lin + k];
                    }
                }
            }
            float_to_half(tw, ts, BRICK_VOX);
            float_to_half(ww, ws, BRICK_VOX);
            float_to_half(ow, os, BRICK_VOX);
            if (summaries) {               // from the halves just written (still in L1)
                const int64_t node = summaries->brick_node[s];
                brick_summary(s, tsdf_a, w_a, occ_a, summaries->max_occ + node, summaries->min_abs_tsdf + node,
                              summaries->observed + node);
            }
        }
    }
    return n;
}

// With brick_node non-null (and the node arrays, as vx_lidar_apply takes them), every brick the
// update changes gets its summary written; a visited brick it leaves unchanged keeps its own.
int64_t vx_rgbd_update(VxContext* ctx, const int64_t* band_slots, int64_t M, const int32_t* coord,
                       const float* depth, const uint8_t* rgb, int64_t H, int64_t W, const double* T12,
                       const RgbdParams* p, half_t* tsdf_a, half_t* w_a, uint8_t* col_a, half_t* occ_a,
                       const int32_t* brick_node, float* node_max_occ, float* node_min_abs_tsdf,
                       uint8_t* node_observed, int nthreads) {
    const NodeSummaries sm{brick_node, node_max_occ, node_min_abs_tsdf, node_observed};
    return guarded([&] {
        return rgbd_update(ctx, band_slots, M, coord, depth, rgb, H, W, T12, p, tsdf_a, w_a, col_a, occ_a,
                           brick_node ? &sm : nullptr, nthreads);
    });
}

void vx_copy_visited(const VxContext* ctx, int64_t* out) {
    std::copy(ctx->visited.begin(), ctx->visited.end(), out);
}

// ----------------------------------------------------------------------------------------- LiDAR
extern "C++" {     // templates inside the extern "C" block
// One ray of the LiDAR walk: its m steps and, per axis, the crossings n, step sign, first
// crossing's voxel index base and direction d; once part 1 is done (near_part), the voxel
// (px, py, pz) after j steps and the crossings k taken so far.
struct RayWalk {
    int64_t px, py, pz, j, m;
    int64_t n[3], sgn[3], base[3], k[3];
    float d[3];
};

#if defined(__AVX2__)
// LANE_PICK + 8 - l, read as eight int32, is all ones in lane l only.
alignas(64) constexpr int32_t LANE_PICK[16] = {0, 0, 0, 0, 0, 0, 0, 0, -1, 0, 0, 0, 0, 0, 0, 0};

// For each 8-bit lane mask, the permutation that moves the masked lanes to the front in order.
inline const __m256i* left_pack_table() {
    alignas(32) static const auto table = [] {
        struct { alignas(32) int32_t v[256][8]; } t{};
        for (int m = 0; m < 256; ++m) {
            int k = 0;
            for (int l = 0; l < 8; ++l)
                if (m >> l & 1) t.v[m][k++] = l;
        }
        return t;
    }();
    return reinterpret_cast<const __m256i*>(table.v);
}

// The LiDAR walk for eight rays at once, one per lane and branch-free per step: the scalar
// walk's mispredicted three-way choice of the next axis becomes three compares and blends. Same
// crossing times (the same float operations as near_part's arrays), the same merge rule (ties:
// x, then y, then z), the same near-sensor counts and codes as near_part and walk_rest, which
// still take any ray whose voxel indices would not fit in int32. Rays come in chunks of `chunk` from the shared counter `next`; a lane
// whose ray ends takes the next one. Codes go to the bucket of their brick's owner thread; on
// return used[] holds the buckets' fill levels and w points into bucket cur, as walk_rest left them.
template <typename Setup, typename Near, typename Rest>
void walk_lanes_avx2(RayWalk& s, Setup& setup_ray, Near& near_part, Rest& walk_rest, std::atomic<int64_t>& next,
                     int64_t n_rays, int chunk, const uint64_t* order, BrickSet& set, std::vector<uint32_t>* buckets,
                     size_t* used, int& cur, uint32_t*& w, int nt, const float* o, float vs, const int64_t* i0,
                     const int64_t* nb0, uint32_t* near) {
    constexpr int L = 8;
    used[cur] = size_t(w - buckets[cur].data());
    std::vector<uint32_t*> wp(static_cast<size_t>(nt), nullptr);
    for (int b = 0; b < nt; ++b) wp[size_t(b)] = buckets[b].data() + used[b];
    auto to_scalar = [&] {
        for (int b = 0; b < nt; ++b) used[b] = size_t(wp[size_t(b)] - buckets[b].data());
        w = buckets[cur].data() + used[cur];
    };
    auto from_scalar = [&] {
        used[cur] = size_t(w - buckets[cur].data());
        for (int b = 0; b < nt; ++b) wp[size_t(b)] = buckets[b].data() + used[b];
    };
    const bool pow2 = (nt & (nt - 1)) == 0;
    auto owner = [&](int32_t idx) { return idx < 0 ? -1 : (pow2 ? int(idx & (nt - 1)) : int(idx % nt)); };
    int64_t ri = 0, ri_end = 0;
    auto next_ray = [&]() -> int64_t {
        for (;;) {
            if (set.overflow.load(std::memory_order_relaxed)) return -1;     // the trace starts over
            if (ri < ri_end) return int64_t(order[ri++] & 0xFFFFFFFFu);
            const int64_t c = next.fetch_add(chunk, std::memory_order_relaxed);
            if (c >= n_rays) return -1;
            ri = c;
            ri_end = std::min<int64_t>(c + chunk, n_rays);
        }
    };
    struct alignas(32) Lanes {
        int32_t px[L], py[L], pz[L], rem[L], c0[L], c1[L], c2[L], code[L], own[L], bx[L], by[L], bz[L];
        int32_t n0[L], n1[L], n2[L], s0[L], s1[L], s2[L], b0[L], b1[L], b2[L];
        float t0[L], t1[L], t2[L], d0[L], d1[L], d2[L];
    } A = {};
    constexpr int64_t FITS = int64_t(1) << 30;
    // Lane l takes rays until one reaches part 2 (rem = steps left), or none is left (rem = -1).
    // Lanes in the near-sensor bricks (every ray starts there, and once out it never comes back,
    // the block being convex) count into the thread's private near counts instead of the
    // buckets; their code is the near block's brick offset and their owner -1.
    int near_bits = 0;
    auto near_code = [&](int64_t bx, int64_t by, int64_t bz) -> int32_t {
        const uint64_t nx = uint64_t(bx - nb0[0]), ny = uint64_t(by - nb0[1]), nz = uint64_t(bz - nb0[2]);
        return (nx < 3) & (ny < 3) & (nz < 3) ? int32_t(((nz * 3 + ny) * 3 + nx) * BRICK_VOX) : -1;
    };
    // Lane l takes the next ray with a length (rem = steps left), or none is left (rem = -1).
    auto load_lane = [&](int l) {
        near_bits &= ~(1 << l);
        for (;;) {
            const int64_t r = next_ray();
            if (r < 0) { A.rem[l] = -1; A.own[l] = -1; A.code[l] = 0; return; }
            if (!setup_ray(r)) continue;
            bool fits = true;
            for (int a = 0; a < 3; ++a) fits &= (s.base[a] < 0 ? -s.base[a] : s.base[a]) + s.n[a] + 16 < FITS;
            if (!fits) {
                to_scalar();
                if (near_part()) walk_rest();
                from_scalar();
                continue;
            }
            A.px[l] = int32_t(i0[0]); A.py[l] = int32_t(i0[1]); A.pz[l] = int32_t(i0[2]);
            A.rem[l] = int32_t(s.m);
            A.c0[l] = A.c1[l] = A.c2[l] = 0;
            A.n0[l] = int32_t(s.n[0]); A.n1[l] = int32_t(s.n[1]); A.n2[l] = int32_t(s.n[2]);
            A.s0[l] = int32_t(s.sgn[0]); A.s1[l] = int32_t(s.sgn[1]); A.s2[l] = int32_t(s.sgn[2]);
            A.b0[l] = int32_t(s.base[0]); A.b1[l] = int32_t(s.base[1]); A.b2[l] = int32_t(s.base[2]);
            float* tl[3] = {A.t0, A.t1, A.t2};
            for (int a = 0; a < 3; ++a)         // the first crossing, as near_part's arrays hold it
                tl[a][l] = s.n[a] > 0 ? (float(s.base[a] + s.sgn[a]) * vs - o[a]) / s.d[a] : INFINITY;
            A.d0[l] = s.d[0]; A.d1[l] = s.d[1]; A.d2[l] = s.d[2];
            A.bx[l] = int32_t(i0[0] >> 3); A.by[l] = int32_t(i0[1] >> 3); A.bz[l] = int32_t(i0[2] >> 3);
            A.own[l] = -1;
            A.code[l] = near_code(A.bx[l], A.by[l], A.bz[l]);      // the sensor's brick: the centre one
            near_bits |= 1 << l;
            return;
        }
    };
    // Room in every bucket for all the codes the lanes have left to write.
    auto make_room = [&] {
        size_t need = 0;
        for (int l = 0; l < L; ++l) need += size_t(A.rem[l] + 1);
        need += L;                        // each store writes all eight lanes
        for (int b = 0; b < nt; ++b) {
            const size_t u = size_t(wp[size_t(b)] - buckets[b].data());
            if (buckets[b].size() < u + need + 1) {
                buckets[b].resize(std::max(2 * buckets[b].size(), u + need + 4096));
                wp[size_t(b)] = buckets[b].data() + u;
            }
        }
    };
    for (int l = 0; l < L; ++l) load_lane(l);
    make_room();
    __m256i px, py, pz, rem, c0, c1, c2, code, ownv, bx, by, bz, n0, n1, n2, s0, s1, s2, b0, b1, b2;
    __m256 t0, t1, t2, d0, d1, d2;
    auto load = [&] {
        px = _mm256_load_si256((const __m256i*)A.px); py = _mm256_load_si256((const __m256i*)A.py);
        pz = _mm256_load_si256((const __m256i*)A.pz); rem = _mm256_load_si256((const __m256i*)A.rem);
        c0 = _mm256_load_si256((const __m256i*)A.c0); c1 = _mm256_load_si256((const __m256i*)A.c1);
        c2 = _mm256_load_si256((const __m256i*)A.c2); code = _mm256_load_si256((const __m256i*)A.code);
        ownv = _mm256_load_si256((const __m256i*)A.own);
        bx = _mm256_load_si256((const __m256i*)A.bx); by = _mm256_load_si256((const __m256i*)A.by);
        bz = _mm256_load_si256((const __m256i*)A.bz);
        n0 = _mm256_load_si256((const __m256i*)A.n0); n1 = _mm256_load_si256((const __m256i*)A.n1);
        n2 = _mm256_load_si256((const __m256i*)A.n2); s0 = _mm256_load_si256((const __m256i*)A.s0);
        s1 = _mm256_load_si256((const __m256i*)A.s1); s2 = _mm256_load_si256((const __m256i*)A.s2);
        b0 = _mm256_load_si256((const __m256i*)A.b0); b1 = _mm256_load_si256((const __m256i*)A.b1);
        b2 = _mm256_load_si256((const __m256i*)A.b2);
        t0 = _mm256_load_ps(A.t0); t1 = _mm256_load_ps(A.t1); t2 = _mm256_load_ps(A.t2);
        d0 = _mm256_load_ps(A.d0); d1 = _mm256_load_ps(A.d1); d2 = _mm256_load_ps(A.d2);
    };
    auto store_moving = [&] {       // the per-step state (the rest is only written by load_lane)
        _mm256_store_si256((__m256i*)A.px, px); _mm256_store_si256((__m256i*)A.py, py);
        _mm256_store_si256((__m256i*)A.pz, pz); _mm256_store_si256((__m256i*)A.rem, rem);
        _mm256_store_si256((__m256i*)A.c0, c0); _mm256_store_si256((__m256i*)A.c1, c1);
        _mm256_store_si256((__m256i*)A.c2, c2); _mm256_store_si256((__m256i*)A.code, code);
        _mm256_store_si256((__m256i*)A.own, ownv);
        _mm256_store_si256((__m256i*)A.bx, bx); _mm256_store_si256((__m256i*)A.by, by);
        _mm256_store_si256((__m256i*)A.bz, bz);
        _mm256_store_ps(A.t0, t0); _mm256_store_ps(A.t1, t1); _mm256_store_ps(A.t2, t2);
    };
    load();
    const __m256 vsv = _mm256_set1_ps(vs), inf = _mm256_set1_ps(INFINITY);
    const __m256 o0 = _mm256_set1_ps(o[0]), o1 = _mm256_set1_ps(o[1]), o2 = _mm256_set1_ps(o[2]);
    const __m256i seven = _mm256_set1_epi32(7), one = _mm256_set1_epi32(1), minus1 = _mm256_set1_epi32(-1);
    // Time of crossing c + 1 of an axis (+inf past its last), as near_part computes it.
    auto crossing = [&](__m256i c, __m256i n, __m256i base, __m256i sg, __m256 d, __m256 oa) {
        const __m256i v = _mm256_add_epi32(base, _mm256_sign_epi32(_mm256_add_epi32(c, one), sg));
        const __m256 t = _mm256_div_ps(_mm256_sub_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(v), vsv), oa), d);
        return _mm256_blendv_ps(inf, t, _mm256_castsi256_ps(_mm256_cmpgt_epi32(n, c)));
    };
    alignas(32) int32_t nb[3][L];
    const __m256i* pack = left_pack_table();
    for (;;) {
        const int act = _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(rem, minus1)));
        if (!act) break;
        // The code of every lane's voxel, to its brick owner's bucket.
        const __m256i lin = _mm256_or_si256(_mm256_and_si256(px, seven),
            _mm256_or_si256(_mm256_slli_epi32(_mm256_and_si256(py, seven), 3),
                            _mm256_slli_epi32(_mm256_and_si256(pz, seven), 6)));
        const __m256i codes = _mm256_add_epi32(code, lin);
        if (near_bits & act) {
            alignas(32) int32_t nc[L];
            _mm256_store_si256((__m256i*)nc, codes);
            for (int bits = near_bits & act; bits; bits &= bits - 1) ++near[nc[__builtin_ctz(unsigned(bits))]];
        }
        for (int b = 0; b < nt; ++b) {     // left-pack the lanes of owner b, store all eight
            const int mb = _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpeq_epi32(ownv, _mm256_set1_epi32(b))));
            _mm256_storeu_si256((__m256i*)wp[size_t(b)], _mm256_permutevar8x32_epi32(codes, pack[mb]));
            wp[size_t(b)] += __builtin_popcount(unsigned(mb));
        }
        // One step on every lane with steps left.
        const __m256i step = _mm256_cmpgt_epi32(rem, _mm256_setzero_si256());
        const __m256i le01 = _mm256_castps_si256(_mm256_cmp_ps(t0, t1, _CMP_LE_OQ));
        const __m256i le02 = _mm256_castps_si256(_mm256_cmp_ps(t0, t2, _CMP_LE_OQ));
        const __m256i le12 = _mm256_castps_si256(_mm256_cmp_ps(t1, t2, _CMP_LE_OQ));
        const __m256i x_first = _mm256_and_si256(le01, le02);
        const __m256i mx = _mm256_and_si256(x_first, step);
        const __m256i my = _mm256_and_si256(_mm256_andnot_si256(x_first, le12), step);
        const __m256i mz = _mm256_andnot_si256(_mm256_or_si256(x_first, le12), step);
        px = _mm256_add_epi32(px, _mm256_and_si256(mx, s0));
        py = _mm256_add_epi32(py, _mm256_and_si256(my, s1));
        pz = _mm256_add_epi32(pz, _mm256_and_si256(mz, s2));
        c0 = _mm256_sub_epi32(c0, mx);
        c1 = _mm256_sub_epi32(c1, my);
        c2 = _mm256_sub_epi32(c2, mz);
        t0 = _mm256_blendv_ps(t0, crossing(c0, n0, b0, s0, d0, o0), _mm256_castsi256_ps(mx));
        t1 = _mm256_blendv_ps(t1, crossing(c1, n1, b1, s1, d1, o1), _mm256_castsi256_ps(my));
        t2 = _mm256_blendv_ps(t2, crossing(c2, n2, b2, s2, d2, o2), _mm256_castsi256_ps(mz));
        rem = _mm256_add_epi32(rem, step);
        // Lanes that entered another brick look it up.
        const __m256i nbx = _mm256_srai_epi32(px, 3), nby = _mm256_srai_epi32(py, 3), nbz = _mm256_srai_epi32(pz, 3);
        const __m256i same = _mm256_and_si256(_mm256_cmpeq_epi32(nbx, bx),
                                              _mm256_and_si256(_mm256_cmpeq_epi32(nby, by), _mm256_cmpeq_epi32(nbz, bz)));
        const int moved = ~_mm256_movemask_ps(_mm256_castsi256_ps(same)) & _mm256_movemask_ps(_mm256_castsi256_ps(step));
        if (moved) {
            _mm256_store_si256((__m256i*)nb[0], nbx);
            _mm256_store_si256((__m256i*)nb[1], nby);
            _mm256_store_si256((__m256i*)nb[2], nbz);
            for (int bits = moved; bits; bits &= bits - 1) {
                const int l = __builtin_ctz(unsigned(bits));
                const __m256i lane = _mm256_loadu_si256((const __m256i*)(LANE_PICK + L - l));
                if (near_bits >> l & 1) {
                    const int32_t nbc = near_code(nb[0][l], nb[1][l], nb[2][l]);
                    if (nbc >= 0) {              // still inside the near bricks
                        code = _mm256_blendv_epi8(code, _mm256_set1_epi32(nbc), lane);
                        continue;
                    }
                    near_bits &= ~(1 << l);
                }
                const int32_t idx = set.insert(nb[0][l], nb[1][l], nb[2][l]);
                // Into lane l by blending, not by a scalar store and a vector load (the load would
                // wait for the store to retire: store forwarding cannot merge them).
                // (unsigned: a set of 2^23 bricks puts idx * 512 past INT32_MAX, as the scalar path's
                // uint32_t codes allow)
                code = _mm256_blendv_epi8(code, _mm256_set1_epi32(idx >= 0 ? int32_t(uint32_t(idx) * BRICK_VOX) : 0),
                                          lane);
                ownv = _mm256_blendv_epi8(ownv, _mm256_set1_epi32(owner(idx)), lane);
            }
            bx = nbx; by = nby; bz = nbz;
        }
        // Lanes whose ray ended take the next ray.
        const int done = act & ~_mm256_movemask_ps(_mm256_castsi256_ps(step));
        if (done) {
            store_moving();
            for (int bits = done; bits; bits &= bits - 1) load_lane(__builtin_ctz(unsigned(bits)));
            make_room();
            load();
        }
    }
    to_scalar();
}
#endif
}  // extern "C++"

// Phase 1: rays (lidar_rays), every free / band / hit sample (lidar_samples), per-voxel cells
// (free-ray count / band / hit) and the band TSDF sums once per (ray, voxel) in ray order.
// points (N, 3) float32 sensor frame. Returns the number M of touched bricks (fetch them with
// vx_copy_bricks) or a negative error.
static int64_t lidar_trace(VxContext* ctx, const float* points, int64_t N, const double* T12,
                       const LidarParams* p, int nthreads) {
    ctx->lidar_ready = false;
    ctx->t_start = omp_get_wtime();
    const Pose P = make_pose(T12);
    // --- rays: drop non-finite and too-close points; unit directions in the world frame.
    std::vector<float>& dirs = ctx->dirs;
    std::vector<float>& ranges = ctx->ranges;
    std::vector<uint8_t>& hit = ctx->hit;
    dirs.clear();
    ranges.clear();
    hit.clear();
    dirs.reserve(3 * N);
    ranges.reserve(N);
    hit.reserve(N);
    for (int64_t i = 0; i < N; ++i) {
        const float x = points[3 * i], y = points[3 * i + 1], z = points[3 * i + 2];
        if (!(std::isfinite(x) && std::isfinite(y) && std::isfinite(z))) continue;
        const float r = std::sqrt(std::fma(z, z, std::fma(y, y, x * x)));    // torch.norm's order
        if (!(r >= p->rmin && r > 0.0f)) continue;
        float n0 = x / r, n1 = y / r, n2 = z / r;
        if (std::isinf(r)) {    // finite coordinates whose norm overflows (> 1.8e19 m): direction from scaled ones
            const float s = std::max(std::fabs(x), std::max(std::fabs(y), std::fabs(z)));
            const float a = x / s, b = y / s, c = z / s;
            const float rs = std::sqrt(std::fma(c, c, std::fma(b, b, a * a)));
            n0 = a / rs; n1 = b / rs; n2 = c / rs;
        }
        for (int k = 0; k < 3; ++k)
            dirs.push_back((n0 * P.R[3 * k] + n1 * P.R[3 * k + 1]) + n2 * P.R[3 * k + 2]);
        const bool h = r <= p->rmax;
        hit.push_back(h ? 1 : 0);
        ranges.push_back(h ? r : p->rmax);
    }
    const int64_t n_rays = int64_t(ranges.size());
    ctx->t_phase[0] = omp_get_wtime();
    const float o0 = P.t[0], o1 = P.t[1], o2 = P.t[2];
    const float vs = p->voxel, step = p->step, neg_trunc = -p->trunc;
    const int nb = p->n_band;
    const int nt = std::max(1, nthreads);
    // Start voxel of every ray, as the reference's floor(origin / voxel).
    const float o[3] = {o0, o1, o2};
    int64_t i0[3];
    for (int a = 0; a < 3; ++a) i0[a] = ifloor(o[a] / vs);
    // Free-space pass order: rays grouped by direction (the top 12 bits of the Morton code of the
    // quantised unit vector, by counting sort; std::sort of the full keys cost ~0.2 ms more), so
    // that consecutive rays walk neighbouring voxels and their cells stay in cache. The counts it
    // produces do not depend on the order.
    std::vector<uint64_t>& order = ctx->ray_order;
    std::vector<uint32_t>& ray_key = ctx->ray_key;
    order.resize(size_t(n_rays));
    ray_key.resize(size_t(n_rays));
    constexpr int ORDER_BITS = 12;
    uint32_t bucket_start[(1 << ORDER_BITS) + 1] = {0};
    for (int64_t r = 0; r < n_rays; ++r) {
        uint64_t key = 0;
        for (int a = 0; a < 3; ++a) {
            const float q = (dirs[3 * r + a] + 1.0f) * 511.5f;
            const uint64_t qa = uint64_t(q > 0.0f ? (q < 1023.0f ? q : 1023.0f) : 0.0f);
            for (int b = 0; b < 10; ++b) key |= ((qa >> b) & 1) << (3 * b + a);
        }
        ray_key[size_t(r)] = uint32_t(key >> (30 - ORDER_BITS));
        ++bucket_start[ray_key[size_t(r)] + 1];
    }
    for (int k = 0; k < (1 << ORDER_BITS); ++k) bucket_start[k + 1] += bucket_start[k];
    for (int64_t r = 0; r < n_rays; ++r) order[bucket_start[ray_key[size_t(r)]]++] = uint64_t(r);
    // Rays in big contiguous chunks: threads then walk different directions and rarely share cells.
    const int ray_chunk = int(std::max<int64_t>(16, n_rays / (8 * int64_t(nt))));
    // The 3x3x3 bricks around the sensor's brick, counted privately per thread (see below).
    const int64_t nb0[3] = {(i0[0] >> 3) - 1, (i0[1] >> 3) - 1, (i0[2] >> 3) - 1};

    int bits = std::max(ctx->set.bits, 14);
    for (;;) {
        if (bits > 24) return VX_ERR_ALLOC;        // voxel codes are brick index * 512 in 32 bits
        ctx->set.reset(bits, true);
        BrickSet& set = ctx->set;
        uint32_t* cells = set.cells.data();
        uint64_t* masks = set.masks.data();
        if (ctx->thread_codes.size() < size_t(nt) * nt) ctx->thread_codes.resize(size_t(nt) * nt);
        ctx->thread_used.assign(size_t(nt) * nt, 0);
        std::atomic<int64_t> next_ray_chunk{0};
        const int64_t team_region_4 = vx_team::begin();
#pragma omp parallel num_threads(nt)
        {
            vx_team::spread(team_region_4);
            // Per ray: boundary-crossing times per axis, merged, and the voxel of every piece.
            std::vector<float> ta[3];
            int32_t pbx = INT32_MIN, pby = 0, pbz = 0, pidx = -1;       // brick of the previous mark
            // Every ray passes the bricks around the sensor: count those in a private 3x3x3-brick
            // block per thread (no atomics, no shared cache lines) and add them up at the end.
            std::vector<uint32_t> near_counts(size_t(NEAR_BRICKS) * BRICK_VOX, 0u);
            uint32_t* near = near_counts.data();
            // The other voxels are listed per thread, in one bucket per owner thread (brick index
            // mod threads), and counted afterwards by their owner: plain increments, no atomics, no
            // shared cache lines, and each owner reads only its own buckets. The walk writes through a
            // raw cursor into the current bucket (room for a whole ray is made before the ray).
            const int tid = omp_get_thread_num();
            std::vector<uint32_t>* buckets = &ctx->thread_codes[size_t(tid) * nt];
            // Fill levels live in thread-private memory while walking: the shared thread_used
            // array puts every thread's counters on one cache line, and the walk updates them at
            // brick crossings (that false sharing cost the whole two-thread speed-up).
            std::vector<size_t> used_local(size_t(nt), 0);
            size_t* used = used_local.data();
            int cur = 0;                                   // bucket of the previous mark's brick
            if (buckets[0].empty()) buckets[0].resize(4096);
            uint32_t* w = buckets[0].data();
            // One ray's walk: its set-up (setup_ray), part 1 inside the near-sensor bricks
            // (near_part) and part 2 beyond them (walk_rest); or eight rays at a time, below.
            RayWalk s;
            // The ray's crossings per axis (s.n, s.base, s.sgn, s.d, s.m). False: it has no length.
            auto setup_ray = [&](int64_t r) -> bool {
                const float d[3] = {dirs[3 * r], dirs[3 * r + 1], dirs[3 * r + 2]};
                const float rng = ranges[r];
                const float te = hit[r] ? rng - vs : rng;
                if (!(te > 0.0f)) return false;
                // Exact traversal (integrate.ray_voxels): the crossings of voxel boundaries on
                // [0, te), merged in order of t (ties: x, then y, then z), each stepping one axis.
                for (int a = 0; a < 3; ++a) {
                    const int64_t i1 = ifloor((o[a] + te * d[a]) / vs);
                    int64_t& na = s.n[a];
                    na = i1 > i0[a] ? i1 - i0[a] : i0[a] - i1;
                    if (na > (int64_t(1) << 26)) { set.range_error.store(1); na = 0; }
                    s.d[a] = d[a];
                    s.base[a] = d[a] > 0.0f ? i0[a] : i0[a] + 1;
                    s.sgn[a] = d[a] > 0.0f ? 1 : -1;
                }
                s.m = s.n[0] + s.n[1] + s.n[2];
                return true;
            };
            // The crossing times of the ray in s (ta), and its part 1 inside the near-sensor
            // bricks. False: the ray ends there; otherwise s holds the walk where it leaves them.
            auto near_part = [&]() -> bool {
                for (int a = 0; a < 3; ++a) {
                    ta[a].resize(size_t(s.n[a]) + 1);
                    float* t = ta[a].data();
                    const float da = s.d[a], oa = o[a];
                    const int64_t base = s.base[a], sg = s.sgn[a];
                    for (int64_t k = 1; k <= s.n[a]; ++k)                   // vectorized
                        t[k - 1] = (float(base + sg * k) * vs - oa) / da;
                    t[s.n[a]] = INFINITY;                                     // merge sentinel
                }
                const float *p0 = ta[0].data(), *p1 = ta[1].data(), *p2 = ta[2].data();
                int64_t px = i0[0], py = i0[1], pz = i0[2];
                int64_t j = 0;
                // Part 1, inside the 3x3x3 near-sensor bricks. The block is convex, so a ray that
                // leaves it never comes back: part 2 needs no near test. (Branchy merge: the select
                // chain's latency costs more than the mispredicts in scalar code.)
                for (;; ++j) {
                    const uint64_t nx = uint64_t((px >> 3) - nb0[0]), ny = uint64_t((py >> 3) - nb0[1]),
                                   nz = uint64_t((pz >> 3) - nb0[2]);
                    if (!((nx < 3) & (ny < 3) & (nz < 3))) break;
                    ++near[((nz * 3 + ny) * 3 + nx) * BRICK_VOX + uint32_t((px & 7) | ((py & 7) << 3) | ((pz & 7) << 6))];
                    if (j == s.m) return false;
                    const float a0 = *p0, a1 = *p1, a2 = *p2;
                    if (a0 <= a1 && a0 <= a2) { ++p0; px += s.sgn[0]; }
                    else if (a1 <= a2) { ++p1; py += s.sgn[1]; }
                    else { ++p2; pz += s.sgn[2]; }
                }
                s.px = px; s.py = py; s.pz = pz; s.j = j;
                s.k[0] = p0 - ta[0].data(); s.k[1] = p1 - ta[1].data(); s.k[2] = p2 - ta[2].data();
                return true;
            };
            // Part 2 of the ray in s, one voxel at a time: one code per (ray, voxel), every step
            // entering a new voxel (counted below). The voxel's place in its brick and the brick
            // follow the stepped axis; the brick is looked up only when that axis wraps around a
            // brick border.
            auto walk_rest = [&]() {
                const int64_t m = s.m;
                used[cur] = size_t(w - buckets[cur].data());
                for (int b = 0; b < nt; ++b)
                    if (buckets[b].size() < used[b] + size_t(m) + 1)
                        buckets[b].resize(std::max(2 * buckets[b].size(), used[b] + size_t(m) + 4096));
                w = buckets[cur].data() + used[cur];
                const float *p0 = ta[0].data() + s.k[0], *p1 = ta[1].data() + s.k[1], *p2 = ta[2].data() + s.k[2];
                int64_t px = s.px, py = s.py, pz = s.pz;
                const int64_t* sgn = s.sgn;
                auto step_axis = [&]() -> int {
                    const float a0 = *p0, a1 = *p1, a2 = *p2;
                    if (a0 <= a1 && a0 <= a2) { ++p0; px += sgn[0]; return 0; }
                    if (a1 <= a2) { ++p1; py += sgn[1]; return 1; }
                    ++p2; pz += sgn[2]; return 2;
                };
                int32_t cx = int32_t(px >> 3), cy = int32_t(py >> 3), cz = int32_t(pz >> 3);
                uint32_t lin = uint32_t((px & 7) | ((py & 7) << 3) | ((pz & 7) << 6));
                const int64_t wrap[3] = {sgn[0] > 0 ? 0 : 7, sgn[1] > 0 ? 0 : 7, sgn[2] > 0 ? 0 : 7};
                bool moved = cx != pbx || cy != pby || cz != pbz;
                for (int64_t j = s.j;; ++j) {
                    if (moved) {
                        pidx = set.insert(cx, cy, cz);
                        pbx = cx; pby = cy; pbz = cz;
                        moved = false;
                        if (pidx >= 0 && pidx % nt != cur) {
                            used[cur] = size_t(w - buckets[cur].data());
                            cur = pidx % nt;
                            w = buckets[cur].data() + used[cur];
                        }
                    }
                    if (pidx >= 0) *w++ = uint32_t(pidx) * BRICK_VOX + lin;
                    if (j == m) break;
                    switch (step_axis()) {
                        case 0:
                            lin = (lin & ~7u) | uint32_t(px & 7);
                            if ((px & 7) == wrap[0]) { cx += int32_t(sgn[0]); moved = true; }
                            break;
                        case 1:
                            lin = (lin & ~(7u << 3)) | uint32_t((py & 7) << 3);
                            if ((py & 7) == wrap[1]) { cy += int32_t(sgn[1]); moved = true; }
                            break;
                        default:
                            lin = (lin & ~(7u << 6)) | uint32_t((pz & 7) << 6);
                            if ((pz & 7) == wrap[2]) { cz += int32_t(sgn[2]); moved = true; }
                    }
                }
            };
#if defined(__AVX2__)
            if (p->free_space)
                walk_lanes_avx2(s, setup_ray, near_part, walk_rest, next_ray_chunk, n_rays, ray_chunk, order.data(), set,
                                buckets, used, cur, w, nt, o, vs, i0, nb0, near);
#else
#pragma omp for schedule(dynamic, ray_chunk) nowait
            for (int64_t ri = 0; ri < n_rays; ++ri) {
                if (!p->free_space || set.overflow.load(std::memory_order_relaxed)) continue;
                if (setup_ray(int64_t(order[size_t(ri)] & 0xFFFFFFFFu)) && near_part()) walk_rest();
            }
#endif
            used[cur] = size_t(w - buckets[cur].data());
            std::copy(used_local.begin(), used_local.end(), ctx->thread_used.begin() + size_t(tid) * nt);
#pragma omp barrier
            // Count the listed voxels of the bricks this thread owns.
#pragma omp master
            ctx->t_walk = omp_get_wtime();
            for (int src = 0; src < nt; ++src) {
                const uint32_t* list = ctx->thread_codes[size_t(src) * nt + tid].data();
                const size_t n_list = ctx->thread_used[size_t(src) * nt + tid];
                for (size_t q = 0; q < n_list; ++q) {
                    if (q + COUNT_PREFETCH < n_list) __builtin_prefetch(cells + list[q + COUNT_PREFETCH], 1);
                    const uint32_t code = list[q];
                    // Setting the mask bit every time (it may be set already) beats branching on
                    // the cell's old value, which mispredicted on about every other code.
                    ++cells[code];
                    masks[code >> 6] |= uint64_t(1) << (code & 63);
                }
            }
            // Add the private near-sensor counts, one thread at a time.
#pragma omp critical(vx_near_merge)
            for (int nbk = 0; nbk < NEAR_BRICKS; ++nbk) {
                const uint32_t* src = near + size_t(nbk) * BRICK_VOX;
                bool any = false;
                for (int lin = 0; lin < BRICK_VOX; ++lin) any |= src[lin] != 0;
                if (!any) continue;
                const int32_t idx = set.insert(nb0[0] + nbk % 3, nb0[1] + (nbk / 3) % 3, nb0[2] + nbk / 9);
                if (idx < 0) continue;
                uint32_t* c = cells + size_t(idx) * BRICK_VOX;
                uint64_t* mw = masks + size_t(idx) * (BRICK_VOX / 64);
                for (int lin = 0; lin < BRICK_VOX; ++lin) {
                    if (!src[lin]) continue;
                    if (!c[lin]) mw[lin >> 6] |= uint64_t(1) << (lin & 63);
                    c[lin] += src[lin];
                }
            }
        }
        if (set.range_error.load()) return VX_ERR_RANGE;
        if (!set.overflow.load()) break;
        bits += 1;
    }
    ctx->t_phase[1] = omp_get_wtime();
    // --- band and hits. (1) parallel over chunks of BAND_CHUNK_RAYS rays: the samples of each ray
    // (divisions, brick lookups, per-ray de-duplication) as (voxel code, observation) entries in
    // ray order, one list per chunk; a hit is an entry with obs = +inf. (2) parallel over bricks
    // (brick index mod threads), each thread reading every list in chunk order, so in ray order: the band
    // TSDF sums of a voxel add up in the order of the reference's index_add_ (ray by ray); each
    // (ray, voxel) counts once, at its first kept sample.
    BrickSet& set = ctx->set;
    uint32_t* cells = set.cells.data();
    uint64_t* masks = set.masks.data();
    auto list = [&](int64_t code) { masks[code >> 6] |= uint64_t(1) << (code & 63); };
    // Chunks of rays go to whichever thread asks next (a thread that starts late, as after an
    // idle spell on a VM, takes fewer); the merge reads the chunks' lists in ray order.
    const int64_t n_chunks = (n_rays + BAND_CHUNK_RAYS - 1) / BAND_CHUNK_RAYS;
    if (ctx->band_entries.size() < size_t(n_chunks)) ctx->band_entries.resize(size_t(n_chunks));
    if (ctx->band_acc.size() < size_t(nt)) ctx->band_acc.resize(size_t(nt));
    std::atomic<int64_t> next_chunk{0};
    const int64_t team_region_5 = vx_team::begin();
#pragma omp parallel num_threads(nt)
    {
        vx_team::spread(team_region_5);
        std::vector<BandEntry> mine;      // a chunk's list, thread-private while filled (see used_local)
        std::vector<uint32_t> seen;       // voxels of this ray already counted
        int64_t cbx = INT64_MIN, cby = 0, cbz = 0;
        int32_t cidx = -1;
        auto code_of = [&](int64_t vx, int64_t vy, int64_t vz) -> int64_t {
            const int64_t bx = vx >> 3, by = vy >> 3, bz = vz >> 3;
            if (bx != cbx || by != cby || bz != cbz) {
                cidx = set.insert(bx, by, bz);
                cbx = bx; cby = by; cbz = bz;
            }
            if (cidx < 0) return -1;
            return int64_t(cidx) * BRICK_VOX + ((vx & 7) | ((vy & 7) << 3) | ((vz & 7) << 6));
        };
        for (int64_t ch; (ch = next_chunk.fetch_add(1, std::memory_order_relaxed)) < n_chunks;) {
            mine.swap(ctx->band_entries[size_t(ch)]);    // its capacity kept across scans
            mine.clear();
            const int64_t r_end = std::min<int64_t>(n_rays, (ch + 1) * BAND_CHUNK_RAYS);
            for (int64_t r = ch * BAND_CHUNK_RAYS; r < r_end; ++r) {
                if (!hit[r]) continue;
                const float d0 = dirs[3 * r], d1 = dirs[3 * r + 1], d2 = dirs[3 * r + 2];
                const float rng = ranges[r];
                const float t0 = rng - p->trunc;
                seen.clear();
                for (int j = 0; j < nb; ++j) {
                    const float tj = t0 + float(j) * step;
                    if (!(tj > 0.0f)) continue;
                    const int64_t vx = ifloor((o0 + tj * d0) / vs);
                    const int64_t vy = ifloor((o1 + tj * d1) / vs);
                    const int64_t vz = ifloor((o2 + tj * d2) / vs);
                    const float c0 = (float(vx) + 0.5f) * vs, c1 = (float(vy) + 0.5f) * vs, c2 = (float(vz) + 0.5f) * vs;
                    const float sdf = rng - (((c0 - o0) * d0 + (c1 - o1) * d1) + (c2 - o2) * d2);
                    if (!(sdf >= neg_trunc)) continue;
                    const int64_t code = code_of(vx, vy, vz);
                    if (code < 0) break;              // overflow / range: handled below
                    if (std::find(seen.begin(), seen.end(), uint32_t(code)) != seen.end()) continue;
                    seen.push_back(uint32_t(code));
                    mine.push_back({uint32_t(code), std::min(std::max(sdf / p->trunc, -1.0f), 1.0f)});
                }
                const int64_t code = code_of(ifloor((o0 + rng * d0) / vs), ifloor((o1 + rng * d1) / vs),
                                             ifloor((o2 + rng * d2) / vs));
                if (code >= 0) mine.push_back({uint32_t(code), INFINITY});
            }
            mine.swap(ctx->band_entries[size_t(ch)]);
        }
    }
    ctx->t_band_list = omp_get_wtime();
    // A voxel's accumulator index is (its thread's count so far) * nt + thread: unique without
    // any shared counter, and one flat array holds them all once the threads are done.
    std::atomic<int> acc_overflow{0};
    // Integer division costs ~25 cycles per entry: thread counts that are powers of two (the
    // common case) split by mask and shift instead.
    const bool pow2 = (nt & (nt - 1)) == 0;
    const uint32_t nt_mask = uint32_t(nt - 1), nt_shift = uint32_t(__builtin_ctz(unsigned(nt)));
    const int64_t team_region_6 = vx_team::begin();
#pragma omp parallel num_threads(nt)
    {
        vx_team::spread(team_region_6);
        const uint32_t tid = uint32_t(omp_get_thread_num());
        BandSums& acc = ctx->band_acc[tid];
        acc.w.clear();
        acc.wt.clear();
        for (int64_t ch = 0; ch < n_chunks; ++ch) {
            for (const BandEntry& e : ctx->band_entries[size_t(ch)]) {
                const uint32_t brick = e.code / BRICK_VOX;
                if ((pow2 ? brick & nt_mask : brick % uint32_t(nt)) != tid) continue;   // another thread's
                uint32_t& cell = cells[e.code];
                list(e.code);                    // unconditionally: see the counting above
                if (e.obs == INFINITY) {
                    cell |= C_HIT;
                    continue;
                }
                if (!(cell & C_BAND)) {
                    const uint64_t a = uint64_t(acc.w.size()) * uint64_t(nt) + tid;
                    if (a > C_BAND_INDEX) { acc_overflow.store(1); break; }
                    cell = (cell & C_HIT) | C_BAND | ((cell & C_COUNT) ? C_BAND_FREE : 0u) | uint32_t(a);
                    acc.w.push_back(0.0f);
                    acc.wt.push_back(0.0f);
                }
                const uint32_t ai = cell & C_BAND_INDEX;
                const uint32_t a = pow2 ? ai >> nt_shift : ai / uint32_t(nt);
                acc.w[a] += 1.0f;
                acc.wt[a] += e.obs;
            }
        }
    }
    if (acc_overflow.load()) return VX_ERR_ALLOC;
    size_t longest = 0;
    ctx->n_band = 0;
    for (int t = 0; t < nt; ++t) {
        longest = std::max(longest, ctx->band_acc[size_t(t)].w.size());
        ctx->n_band += int64_t(ctx->band_acc[size_t(t)].w.size());
    }
    ctx->band_w.resize(longest * size_t(nt));
    ctx->band_wt.resize(longest * size_t(nt));
    for (int t = 0; t < nt; ++t) {
        const BandSums& acc = ctx->band_acc[size_t(t)];
        for (size_t k = 0; k < acc.w.size(); ++k) {
            ctx->band_w[k * size_t(nt) + size_t(t)] = acc.w[k];
            ctx->band_wt[k * size_t(nt) + size_t(t)] = acc.wt[k];
        }
    }
    if (set.range_error.load()) return VX_ERR_RANGE;
    if (set.overflow.load()) {
        // Rare: the band / hit bricks overflowed the table sized by the free-space pass. Retry
        // with a bigger table (the next call starts from it).
        ctx->set.reset(bits + 1, true);
        return lidar_trace(ctx, points, N, T12, p, nthreads);
    }
    ctx->lidar_ready = true;
    ctx->t_phase[2] = omp_get_wtime();
    return set.size();
}

int64_t vx_lidar_trace(VxContext* ctx, const float* points, int64_t N, const double* T12,
                       const LidarParams* p, int nthreads) {
    return guarded([&] { return lidar_trace(ctx, points, N, T12, p, nthreads); });
}

// One brick of vx_lidar_apply: every listed voxel (mask bits mk) takes its band TSDF sums or its
// free-space TSDF (+1 per ray), then its occupancy update; every cell read is zeroed again.
inline void apply_brick_scalar(uint32_t* __restrict c, const uint64_t* __restrict mk, half_t* __restrict ts,
                               half_t* __restrict ws, half_t* __restrict os, const float* band_w,
                               const float* band_wt, float maxw, float l_hit, float l_miss, float l_min,
                               float l_max) {
    for (int w = 0; w < BRICK_VOX / 64; ++w) {
        for (uint64_t bitsw = mk[w]; bitsw; bitsw &= bitsw - 1) {
            const int lin = 64 * w + __builtin_ctzll(bitsw);
            const uint32_t cell = c[lin];
            c[lin] = 0;
            const bool band = (cell & C_BAND) != 0;
            const uint32_t n_free = band ? 0u : (cell & C_COUNT);
            const bool free = band ? (cell & C_BAND_FREE) != 0 : n_free != 0;
            if (band) {                          // the band's TSDF sums, one per voxel
                const uint32_t a = cell & C_BAND_INDEX;
                const float w_old = float(ws[lin]);
                const float t_old = float(ts[lin]);
                const float w_new = w_old + band_w[a];
                ts[lin] = half_t((t_old * w_old + band_wt[a]) / w_new);
                ws[lin] = half_t(std::min(w_new, maxw));
            } else if (n_free) {                 // free samples, outside every band
                const float n = float(n_free);
                const float w_old = float(ws[lin]);
                const float t_old = float(ts[lin]);
                const float w_new = w_old + n;
                ts[lin] = half_t((t_old * w_old + n) / w_new);
                ws[lin] = half_t(std::min(w_new, maxw));
            }
            const float delta = (cell & C_HIT) ? l_hit : (free ? l_miss : 0.0f);
            if (delta != 0.0f) {
                const float o = float(os[lin]) + delta;
                os[lin] = half_t(std::min(std::max(o, l_min), l_max));
            }
        }
    }
}

#if defined(__AVX2__) && defined(__F16C__)
// apply_brick_scalar eight voxels at a time over the whole brick, branch-free (a brick holds ~14 %
// listed voxels in scattered rows: the scalar loop's branches mispredicted on most of them). Same
// float32 operations in the same order; a voxel that is not updated keeps its stored half bits.
// Band voxels (a few per brick) take their sums in scalar code.
inline void apply_brick_avx2(uint32_t* __restrict c, const uint64_t* __restrict mk, half_t* __restrict ts,
                             half_t* __restrict ws, half_t* __restrict os, const float* band_w,
                             const float* band_wt, float maxw, float l_hit, float l_miss, float l_min,
                             float l_max) {
    const __m256i k_band = _mm256_set1_epi32(int(C_BAND)), k_count = _mm256_set1_epi32(int(C_COUNT));
    const __m256i k_hit = _mm256_set1_epi32(int(C_HIT)), k_bfree = _mm256_set1_epi32(int(C_BAND_FREE));
    const __m256i zero_i = _mm256_setzero_si256();
    const __m256 v_maxw = _mm256_set1_ps(maxw), v_hit = _mm256_set1_ps(l_hit), v_miss = _mm256_set1_ps(l_miss);
    const __m256 v_lmin = _mm256_set1_ps(l_min), v_lmax = _mm256_set1_ps(l_max), zero = _mm256_setzero_ps();
    constexpr int R = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    // 16-bit lanes: where the 32-bit mask m is set, a, else b.
    auto blend16 = [](__m128i a, __m128i b, __m256 m) {
        const __m256i mi = _mm256_castps_si256(m);
        const __m128i m16 = _mm_packs_epi32(_mm256_castsi256_si128(mi), _mm256_extracti128_si256(mi, 1));
        return _mm_blendv_epi8(b, a, m16);
    };
    for (int w = 0; w < BRICK_VOX / 64; ++w) {
        if (!mk[w]) continue;                 // no listed voxel: its cells are zero, nothing changes
        for (int g = 0; g < 64; g += 8) {
            const int lin = 64 * w + g;
            if (!((mk[w] >> g) & 0xFF)) continue;
            __m256i* cp = reinterpret_cast<__m256i*>(c + lin);
            const __m256i cell = _mm256_loadu_si256(cp);
            _mm256_storeu_si256(cp, zero_i);
            const __m256i band = _mm256_cmpeq_epi32(_mm256_and_si256(cell, k_band), k_band);
            const __m256i cnt = _mm256_andnot_si256(band, _mm256_and_si256(cell, k_count));   // 0 in the band
            const __m256 upd = _mm256_castsi256_ps(_mm256_xor_si256(_mm256_cmpeq_epi32(cnt, zero_i),
                                                                    _mm256_set1_epi32(-1)));
            const __m256 free = _mm256_or_ps(upd, _mm256_castsi256_ps(_mm256_and_si256(
                band, _mm256_cmpeq_epi32(_mm256_and_si256(cell, k_bfree), k_bfree))));
            const __m256 hit = _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(cell, k_hit), k_hit));
            const __m128i th = _mm_loadu_si128(reinterpret_cast<const __m128i*>(ts + lin));
            const __m128i wh = _mm_loadu_si128(reinterpret_cast<const __m128i*>(ws + lin));
            const __m128i oh = _mm_loadu_si128(reinterpret_cast<const __m128i*>(os + lin));
            const __m256 t_old = _mm256_cvtph_ps(th), w_old = _mm256_cvtph_ps(wh), o_old = _mm256_cvtph_ps(oh);
            const __m256 n = _mm256_cvtepi32_ps(cnt);
            const __m256 w_new = _mm256_add_ps(w_old, n);
            const __m256 t_new = _mm256_div_ps(_mm256_add_ps(_mm256_mul_ps(t_old, w_old), n), w_new);
            const __m256 w_cl = _mm256_min_ps(v_maxw, w_new);            // std::min(w_new, maxw)
            const __m256 delta = _mm256_blendv_ps(_mm256_and_ps(free, v_miss), v_hit, hit);
            const __m256 o = _mm256_add_ps(o_old, delta);
            const __m256 o_cl = _mm256_min_ps(v_lmax, _mm256_max_ps(v_lmin, o));   // min(max(o, l_min), l_max)
            const __m256 occ_upd = _mm256_cmp_ps(delta, zero, _CMP_NEQ_OQ);
            _mm_storeu_si128(reinterpret_cast<__m128i*>(ts + lin), blend16(_mm256_cvtps_ph(t_new, R), th, upd));
            _mm_storeu_si128(reinterpret_cast<__m128i*>(ws + lin), blend16(_mm256_cvtps_ph(w_cl, R), wh, upd));
            _mm_storeu_si128(reinterpret_cast<__m128i*>(os + lin), blend16(_mm256_cvtps_ph(o_cl, R), oh, occ_upd));
            // Band voxels (left unchanged above): their sums, by the accumulator index in the cell.
            if (const uint32_t band8 = uint32_t(_mm256_movemask_ps(_mm256_castsi256_ps(band)))) {
                alignas(32) uint32_t cv[8];
                _mm256_store_si256(reinterpret_cast<__m256i*>(cv), cell);
                for (uint32_t bb = band8; bb; bb &= bb - 1) {
                    const int k = __builtin_ctz(bb);
                    const uint32_t a = cv[k] & C_BAND_INDEX;
                    const float wo = float(ws[lin + k]);
                    const float to = float(ts[lin + k]);
                    const float wn = wo + band_w[a];
                    ts[lin + k] = half_t((to * wo + band_wt[a]) / wn);
                    ws[lin + k] = half_t(std::min(wn, maxw));
                }
            }
        }
    }
}
#endif

// Phase 2: apply the traced updates. slots (M,) int64 are the octree slots of the M bricks of
// phase 1, in the order vx_copy_bricks gave them. With `summaries` (brick_node (pool,) int32 and
// node arrays float32 max occupancy, float32 min |tsdf|, uint8 observed; null to skip), each
// brick's summary (brick_summary) is written to its node while the brick is in cache. Returns the
// number of distinct slots (fetch them, sorted, with vx_copy_lidar_slots) or a negative error.
static int64_t lidar_apply(VxContext* ctx, const int64_t* slots, int64_t M, const LidarParams* p, half_t* tsdf_a,
                       half_t* w_a, half_t* occ_a, const NodeSummaries* summaries, int nthreads) {
    if (!ctx->lidar_ready || M != ctx->set.size()) return VX_ERR_STATE;
    ctx->lidar_ready = false;
    uint32_t* cells = ctx->set.cells.data();
    const uint64_t* masks = ctx->set.masks.data();
    const float maxw = p->max_weight, l_hit = p->l_hit, l_miss = p->l_miss, l_min = p->l_min, l_max = p->l_max;
    const float* band_w = ctx->band_w.data();
    const float* band_wt = ctx->band_wt.data();
    int64_t n_touched = 0;
    // Every listed voxel once, brick by brick: band voxels take their accumulated TSDF
    // observations, the others free-space TSDF (+1 per ray); then occupancy. Each cell read is
    // zeroed again for the next scan.
    const int64_t team_region_7 = vx_team::begin();
#pragma omp parallel num_threads(std::max(1, nthreads)) reduction(+ : n_touched)
    {
        vx_team::spread(team_region_7);
#pragma omp for schedule(dynamic, 16)
        for (int64_t i = 0; i < M; ++i) {
            if (i + PREFETCH_BRICKS < M) prefetch_brick(slots[i + PREFETCH_BRICKS], tsdf_a, w_a, occ_a);
            uint32_t* c = cells + size_t(i) * BRICK_VOX;
            const uint64_t* mk = masks + size_t(i) * (BRICK_VOX / 64);
            const int64_t base = slots[i] * BRICK_VOX;
            half_t* ts = tsdf_a + base;
            half_t* ws = w_a + base;
            half_t* os = occ_a + base;
            for (int w = 0; w < BRICK_VOX / 64; ++w) n_touched += __builtin_popcountll(mk[w]);
#if defined(__AVX2__) && defined(__F16C__)
            apply_brick_avx2(c, mk, ts, ws, os, band_w, band_wt, maxw, l_hit, l_miss, l_min, l_max);
#else
            apply_brick_scalar(c, mk, ts, ws, os, band_w, band_wt, maxw, l_hit, l_miss, l_min, l_max);
#endif
            if (summaries) {
                const int64_t node = summaries->brick_node[slots[i]];
                brick_summary(slots[i], tsdf_a, w_a, occ_a, summaries->max_occ + node, summaries->min_abs_tsdf + node,
                              summaries->observed + node);
            }
        }
    }
    ctx->set.cells_dirty = false;                  // every listed cell was zeroed above
    ctx->n_touched = n_touched;
    ctx->t_phase[3] = omp_get_wtime();
    sorted_distinct(slots, M, ctx->slot_bits, ctx->lidar_slots);
    return int64_t(ctx->lidar_slots.size());
}

int64_t vx_lidar_apply(VxContext* ctx, const int64_t* slots, int64_t M, const LidarParams* p, half_t* tsdf_a,
                       half_t* w_a, half_t* occ_a, const int32_t* brick_node, float* node_max_occ,
                       float* node_min_abs_tsdf, uint8_t* node_observed, int nthreads) {
    const NodeSummaries sm{brick_node, node_max_occ, node_min_abs_tsdf, node_observed};
    return guarded([&] { return lidar_apply(ctx, slots, M, p, tsdf_a, w_a, occ_a, brick_node ? &sm : nullptr, nthreads); });
}

// Sizes of the last LiDAR trace: out[0] rays kept, [1] voxels touched, [2] band voxels, [3] bricks;
// then microseconds spent in: [4] rays, [5] free-space pass, [6] band/hit pass, [7] apply (from the
// end of the trace, so it includes the caller's allocation); [8] the free-space pass's walk alone
// (the rest of [5] is its counting); [9] the band/hit pass's serial merge alone.
void vx_lidar_stats(const VxContext* ctx, int64_t* out) {
    out[4] = int64_t((ctx->t_phase[0] - ctx->t_start) * 1e6);
    out[5] = int64_t((ctx->t_phase[1] - ctx->t_phase[0]) * 1e6);
    out[6] = int64_t((ctx->t_phase[2] - ctx->t_phase[1]) * 1e6);
    out[7] = int64_t((ctx->t_phase[3] - ctx->t_phase[2]) * 1e6);
    out[8] = int64_t((ctx->t_walk - ctx->t_phase[0]) * 1e6);
    out[9] = int64_t((ctx->t_phase[2] - ctx->t_band_list) * 1e6);
    out[0] = int64_t(ctx->ranges.size());
    out[1] = ctx->n_touched;
    out[2] = ctx->n_band;
    out[3] = ctx->set.size();
}

void vx_team_stats(int64_t* out) { out[0] = vx_team::regions.load(); out[1] = vx_team::moves.load(); }

void vx_copy_lidar_slots(const VxContext* ctx, int64_t* out) {
    std::copy(ctx->lidar_slots.begin(), ctx->lidar_slots.end(), out);
}

// ----------------------------------------------------------------------------------------- summaries
// out[i] = brick slots[i] is wholly observed free space (SparseVoxelOctree.bricks_free_torch):
// every voxel has occupancy <= occ_max and either no weight or TSDF >= tsdf_min.
void vx_bricks_free(const int64_t* slots, int64_t n, const half_t* tsdf_a, const half_t* w_a, const half_t* occ_a,
                    float occ_max, float tsdf_min, uint8_t* out, int nthreads) {
#pragma omp parallel num_threads(std::max(1, nthreads))
    {
        alignas(64) float tw[BRICK_VOX], ww[BRICK_VOX], ow[BRICK_VOX];
#pragma omp for schedule(static)
        for (int64_t i = 0; i < n; ++i) {
            load_brick(slots[i], tsdf_a, w_a, occ_a, tw, ww, ow);
            int32_t ok = 1;
            for (int lin = 0; lin < BRICK_VOX; ++lin)                      // vectorized
                ok &= int32_t(ow[lin] <= occ_max) & (int32_t(ww[lin] == 0.0f) | int32_t(tw[lin] >= tsdf_min));
            out[i] = uint8_t(ok);
        }
    }
}

// Brick part of SparseVoxelOctree.update_summaries (see brick_summary): for slots (N,) int64,
// outputs (N,) float32 max occupancy, float32 min |tsdf| and uint8 observed.
void vx_brick_summaries(const int64_t* slots, int64_t n, const half_t* tsdf_a, const half_t* w_a,
                        const half_t* occ_a, float* max_occ, float* min_abs_tsdf, uint8_t* observed,
                        int nthreads) {
#pragma omp parallel for schedule(static) num_threads(std::max(1, nthreads))
    for (int64_t i = 0; i < n; ++i) {
        if (i + PREFETCH_BRICKS < n) prefetch_brick(slots[i + PREFETCH_BRICKS], tsdf_a, w_a, occ_a);
        brick_summary(slots[i], tsdf_a, w_a, occ_a, max_occ + i, min_abs_tsdf + i, observed + i);
    }
}

}  // extern "C"
