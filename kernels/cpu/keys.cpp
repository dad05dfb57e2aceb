// Compiled CPU twins of the key bookkeeping in voxmap_ros/core/morton.py and hashtable.py.
//
// Why: a frame's integration runs ~100 small tensor ops of key arithmetic (Morton spreads,
// hashing, probing rounds). Each torch op releases and re-takes the GIL, and in the ROS node the
// executor thread holds the GIL much of the time, so every op can wait for it; one call per step
// here takes the GIL once. Integer math only: results are bitwise those of the torch code.
//
// Plain C ABI over raw pointers, loaded by voxmap_ros/core/native.py with ctypes (built together
// with fusion.cpp and mesh.cpp into one library).
#include <cstdint>

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
    constexpr int64_t BIT17 = int64_t(0b111) << (3 * 17);
    for (int64_t i = 0; i < n; ++i) {
        int64_t k = keys[i];
        int64_t* row = out + i * (levels_up + 1);
        row[0] = k;
        for (int64_t j = 1; j <= levels_up; ++j) {
            int64_t m = (k & MORTON_MASK) >> 3;
            m = (m ^ BIT17) | ((m & BIT17) << 3);
            k = m | (((k >> LEVEL_SHIFT) + 1) << LEVEL_SHIFT);
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
