// Compiled CPU twins of the key bookkeeping in voxmap_ros/core/morton.py and hashtable.py, and of
// the octree's ancestor refresh (SparseVoxelOctree._refresh_closure) that walks those keys.
//
// Why: a frame's integration runs ~100 small tensor ops of key arithmetic (Morton spreads,
// hashing, probing rounds). Each torch op releases and re-takes the GIL, and in the ROS node the
// executor thread holds the GIL much of the time, so every op can wait for it; one call per step
// here takes the GIL once. Results are bitwise those of the torch code (integer math, and max /
// min / or for the summaries).
//
// Plain C ABI over raw pointers, loaded by voxmap_ros/core/native.py with ctypes (built together
// with fusion.cpp and mesh.cpp into one library).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace {

constexpr int COORD_BITS = 19;                        // morton.COORD_BITS
constexpr int64_t COORD_BIAS = int64_t(1) << (COORD_BITS - 1);
constexpr int LEVEL_SHIFT = 3 * COORD_BITS;           // 57
constexpr int64_t MORTON_MASK = (int64_t(1) << LEVEL_SHIFT) - 1;
constexpr int64_t EMPTY = -1, TOMBSTONE = -2;         // hashtable.EMPTY / TOMBSTONE

inline int64_t spread3(int64_t v) {                   // morton._spread3
    v &= 0x1FFFFF;
    v = (v | (v << 32)) & 0x1F00000000FFFF;
    v = (v | (v << 16)) & 0x1F0000FF0000FF;
    v = (v | (v << 8)) & 0x100F00F00F00F00F;
    v = (v | (v << 4)) & 0x10C30C30C30C30C3;
    v = (v | (v << 2)) & 0x1249249249249249;
    return v;
}

inline int64_t compact3(int64_t v) {                  // morton._compact3
    v &= 0x1249249249249249;
    v = (v | (v >> 2)) & 0x10C30C30C30C30C3;
    v = (v | (v >> 4)) & 0x100F00F00F00F00F;
    v = (v | (v >> 8)) & 0x1F0000FF0000FF;
    v = (v | (v >> 16)) & 0x1F00000000FFFF;
    v = (v | (v >> 32)) & 0x1FFFFF;
    return v;
}

constexpr int64_t BIT17 = int64_t(0b111) << (3 * 17);   // morton._BIT17 / _BIT18
constexpr int64_t BIT18 = int64_t(0b111) << (3 * 18);

inline int64_t parent_key(int64_t k) {                // morton.parent
    int64_t m = (k & MORTON_MASK) >> 3;
    m = (m ^ BIT17) | ((m & BIT17) << 3);
    return m | (((k >> LEVEL_SHIFT) + 1) << LEVEL_SHIFT);
}

inline int64_t first_child_key(int64_t k) {           // morton.children(k)[0]; + c for child c
    const int64_t m = ((k & MORTON_MASK) ^ BIT17) & ~BIT18;
    return (m << 3) | (((k >> LEVEL_SHIFT) - 1) << LEVEL_SHIFT);
}

inline int64_t home_slot(int64_t key, int bits) {     // hashtable.hash_slots (keys >= 0)
    uint64_t k = uint64_t(key ^ ((key >> 29) & ((int64_t(1) << 35) - 1)));
    k *= 0x9E3779B97F4A7C15ull;                       // wraps mod 2^64 like the int64 product
    return int64_t(k >> (64 - bits)) & ((int64_t(1) << bits) - 1);
}

}  // namespace

extern "C" {

// coords (n, 3) int64 node coordinates, levels (n,) int64 or null (then `level` for all) ->
// keys (n,) int64, as morton.encode.
void vx_morton_encode(const int64_t* coords, int64_t n, const int64_t* levels, int64_t level, int64_t* out) {
    for (int64_t i = 0; i < n; ++i) {
        const int64_t* c = coords + 3 * i;
        const int64_t m = spread3(c[0] + COORD_BIAS) | (spread3(c[1] + COORD_BIAS) << 1) |
                          (spread3(c[2] + COORD_BIAS) << 2);
        out[i] = m | ((levels ? levels[i] : level) << LEVEL_SHIFT);
    }
}

// keys (n,) int64 -> coords (n, 3) int64 and levels (n,) int64 (levels may be null), as morton.decode.
void vx_morton_decode(const int64_t* keys, int64_t n, int64_t* coords, int64_t* levels) {
    for (int64_t i = 0; i < n; ++i) {
        const int64_t m = keys[i] & MORTON_MASK;
        coords[3 * i] = compact3(m) - COORD_BIAS;
        coords[3 * i + 1] = compact3(m >> 1) - COORD_BIAS;
        coords[3 * i + 2] = compact3(m >> 2) - COORD_BIAS;
        if (levels) levels[i] = keys[i] >> LEVEL_SHIFT;
    }
}

// keys (n,) int64 -> out (n, levels_up + 1) int64, column j the ancestor j levels up, as
// morton.ancestors (parent: floor-halve each coordinate, level + 1; see morton._parent_word).
void vx_morton_ancestors(const int64_t* keys, int64_t n, int64_t levels_up, int64_t* out) {
    for (int64_t i = 0; i < n; ++i) {
        int64_t k = keys[i];
        int64_t* row = out + i * (levels_up + 1);
        row[0] = k;
        for (int64_t j = 1; j <= levels_up; ++j) {
            k = parent_key(k);
            row[j] = k;
        }
    }
}

// Linear-probing lookup in one flat table (hashtable._Table.find) of 2^bits slots: for each key
// the slot holding it, or -1 at the first EMPTY slot. Tombstones probe on.
void vx_hash_find(const int64_t* table_keys, int bits, const int64_t* keys, int64_t n, int64_t* out) {
    const int64_t capacity = int64_t(1) << bits, mask = capacity - 1;
    for (int64_t i = 0; i < n; ++i) {
        const int64_t k = keys[i];
        int64_t s = home_slot(k, bits), found = -1;
        for (int64_t probe = 0; probe < capacity; ++probe) {
            const int64_t t = table_keys[s];
            if (t == k) { found = s; break; }
            if (t == EMPTY) break;
            s = (s + 1) & mask;
        }
        out[i] = found;
    }
}

// The hash table as HashTable holds it: the table inserts go to and, while it migrates, the one it
// migrates from (old_keys null when none).
struct Tables {
    const int64_t* new_keys;
    const int32_t* new_values;
    int new_bits;
    const int64_t* old_keys;
    const int32_t* old_values;
    int old_bits;
};

static int32_t table_value(const Tables& t, int64_t key) {     // HashTable.lookup of one key
    int64_t s;
    vx_hash_find(t.new_keys, t.new_bits, &key, 1, &s);
    if (s >= 0) return t.new_values[s];
    if (!t.old_keys) return -1;
    vx_hash_find(t.old_keys, t.old_bits, &key, 1, &s);
    return s >= 0 ? t.old_values[s] : -1;
}

// First half of SparseVoxelOctree._refresh_closure: parent keys (n,) int64 of levels >= 1 and
// all their ancestors up to level `levels`, distinct, sorted (so level by level, bottom-up), in
// out_keys (room for n * levels), and each one's node id or -1 where the node does not exist yet,
// in out_ids. Returns the count.
int64_t vx_closure_keys(const int64_t* parent_keys, int64_t n, int levels, const int64_t* new_keys,
                        const int32_t* new_values, int new_bits, const int64_t* old_keys, const int32_t* old_values,
                        int old_bits, int64_t* out_keys, int64_t* out_ids) {
    const Tables t{new_keys, new_values, new_bits, old_keys, old_values, old_bits};
    std::vector<int64_t> pending(parent_keys, parent_keys + n), level;
    std::sort(pending.begin(), pending.end());          // by level first (the top bits)
    size_t next = 0;                                     // first pending key not merged yet
    int64_t count = 0;
    for (int l = 1; l <= levels; ++l) {
        for (; next < pending.size() && (pending[next] >> LEVEL_SHIFT) == l; ++next) level.push_back(pending[next]);
        if (level.empty()) continue;
        std::sort(level.begin(), level.end());
        level.erase(std::unique(level.begin(), level.end()), level.end());
        for (const int64_t k : level) {
            out_keys[count] = k;
            out_ids[count] = table_value(t, k);
            ++count;
        }
        for (int64_t& k : level) k = parent_key(k);
    }
    return count;
}

// SparseVoxelOctree's combine_children_torch: parents ids (n,) int64 in the order given (a parent
// after the parents among its children), children kid_ids (n, 8) int64 (-1 absent). A child bit
// set in free_mask (uint8 per node) without a child node counts as observed free space at
// free_logodds. Writes max_occ / min_abs_tsdf (float32) and observed (uint8 0/1) per node.
static void vx_combine_children(const int64_t* ids, const int64_t* kid_ids, int64_t n, const uint8_t* free_mask,
                         float free_logodds, float* max_occ, float* min_abs_tsdf, uint8_t* observed) {
    for (int64_t i = 0; i < n; ++i) {
        const int64_t id = ids[i];
        const int64_t* kids = kid_ids + 8 * i;
        const unsigned fm = free_mask[id];
        float mo = -INFINITY, mt = 1.0f;
        uint8_t ob = 0;
        for (int c = 0; c < 8; ++c) {
            const int64_t k = kids[c];
            if (k >= 0) {
                mo = std::max(mo, max_occ[k]);
                mt = std::min(mt, min_abs_tsdf[k]);
                ob |= observed[k];
            } else if ((fm >> c) & 1u) {
                mo = std::max(mo, free_logodds);
                ob = 1;
            }
        }
        max_occ[id] = mo;
        min_abs_tsdf[id] = mt;
        observed[id] = ob;
    }
}

// Second half: the children of keys (n,) (node ids ids (n,)) are looked up in the tables and
// combined (vx_combine_children) in the order given.
void vx_closure_refresh(const int64_t* keys, const int64_t* ids, int64_t n, const int64_t* new_keys,
                        const int32_t* new_values, int new_bits, const int64_t* old_keys, const int32_t* old_values,
                        int old_bits, const uint8_t* free_mask, float free_logodds, float* max_occ,
                        float* min_abs_tsdf, uint8_t* observed) {
    const Tables t{new_keys, new_values, new_bits, old_keys, old_values, old_bits};
    std::vector<int64_t> kids(size_t(8) * size_t(n));
    for (int64_t i = 0; i < n; ++i) {
        const int64_t c0 = first_child_key(keys[i]);
        for (int c = 0; c < 8; ++c) kids[size_t(8 * i + c)] = table_value(t, c0 | c);
    }
    vx_combine_children(ids, kids.data(), n, free_mask, free_logodds, max_occ, min_abs_tsdf, observed);
}

// hashtable._Table.insert_absent: unique keys (n,) known to be absent go in with values (n,) int32,
// in the same rounds as the torch code (each round, every pending key looks at its current slot;
// of the keys finding a free (EMPTY or TOMBSTONE) slot the lowest index takes it, all others
// step one slot on), so the table ends up bitwise identical. `pending` is scratch of n int64.
// Returns the number of tombstones reused, or -1 when the table has no free slot left.
int64_t vx_hash_insert_absent(int64_t* table_keys, int32_t* table_values, int bits, const int64_t* keys,
                              const int32_t* values, int64_t n, int64_t* pending, int64_t* slot) {
    const int64_t capacity = int64_t(1) << bits, mask = capacity - 1;
    for (int64_t i = 0; i < n; ++i) {
        pending[i] = i;
        slot[i] = home_slot(keys[i], bits);
    }
    int64_t left = n, reused = 0;
    for (int64_t round = 0; left > 0; ++round) {
        if (round > capacity) return -1;
        int64_t kept = 0;
        // In index order: a slot claimed earlier in this round is occupied now, which is what
        // losing the claim means in the torch code.
        for (int64_t j = 0; j < left; ++j) {
            const int64_t i = pending[j];
            const int64_t s = slot[i];
            const int64_t cur = table_keys[s];
            if (cur == EMPTY || cur == TOMBSTONE) {
                reused += cur == TOMBSTONE;
                table_keys[s] = keys[i];
                table_values[s] = values[i];
            } else {
                slot[i] = (s + 1) & mask;
                pending[kept++] = i;
            }
        }
        left = kept;
    }
    return reused;
}

}  // extern "C"
