// Keeps the threads of an OpenMP team on different CPUs without binding them.
//
// Why: with OMP_PROC_BIND unset, Linux sometimes leaves two threads of a team on one CPU for a
// whole parallel region (seen after another process ran, or after the team slept through an idle
// gap: the region then takes about twice as long). Binding (OMP_PROC_BIND=true) avoids it but pins
// every thread for the life of the process, which a node sharing its CPUs with others should not do.
// spread() instead checks at the start of a region and, on a clash, moves the thread that checks
// in second to an allowed CPU no team mate is on, then gives it its full CPU mask back at once, so
// the scheduler stays free to move it afterwards. Set VOXMAP_SPREAD_THREADS=0 to turn it off.
//
// The CPU table below is shared: one team may use it at a time. The fusion kernels run under the
// lock of voxmap_ros/core/native.py (their scratch context is shared too), so that holds there.
#pragma once

#include <atomic>
#include <cstdint>
#include <cstdlib>

#include <omp.h>
#include <sched.h>

namespace vx_team {

constexpr int MAX_TEAM = 64;
inline std::atomic<int64_t> cpu_of[MAX_TEAM];          // (region << 16) | (CPU + 1), per team thread
inline std::atomic<int64_t> region_count{0};
inline std::atomic_flag table_lock = ATOMIC_FLAG_INIT;
inline std::atomic<int64_t> regions{0}, moves{0};
inline const bool enabled = [] {
    const char* e = std::getenv("VOXMAP_SPREAD_THREADS");
    return !(e && e[0] == '0');
}();

// A token for the next parallel region; take it outside the region, pass it to spread().
inline int64_t begin() { return region_count.fetch_add(1, std::memory_order_relaxed) + 1; }

// Call from every thread of the team, first thing in the region that `region` (begin()) names.
// No barrier: a thread that starts late (its CPU was idle and took milliseconds to run it again,
// as on a VM) does not hold up the others, which start on the region's work at once. Threads
// check in one at a time; one that finds a mate already checked in on its CPU moves.
inline void spread(int64_t region) {
    const int nt = omp_get_num_threads(), me = omp_get_thread_num();
    if (nt < 2 || nt > MAX_TEAM || !enabled) return;
    while (table_lock.test_and_set(std::memory_order_acquire)) {
    }
    if (me == 0) regions.fetch_add(1, std::memory_order_relaxed);
    int mine = sched_getcpu();
    auto taken = [&](int c) {
        for (int t = 0; t < nt; ++t)
            if (t != me && cpu_of[t].load(std::memory_order_relaxed) == ((region << 16) | (c + 1))) return true;
        return false;
    };
    cpu_set_t allowed;
    if (taken(mine) && sched_getaffinity(0, sizeof(allowed), &allowed) == 0) {
        for (int c = 0; c < CPU_SETSIZE; ++c) {
            if (!CPU_ISSET(c, &allowed) || taken(c)) continue;
            cpu_set_t one;
            CPU_ZERO(&one);
            CPU_SET(c, &one);
            if (sched_setaffinity(0, sizeof(one), &one) == 0) {    // migrates this thread now
                mine = c;
                moves.fetch_add(1, std::memory_order_relaxed);
                sched_setaffinity(0, sizeof(allowed), &allowed);
            }
            break;
        }
    }
    cpu_of[me].store((region << 16) | (mine + 1), std::memory_order_relaxed);
    table_lock.clear(std::memory_order_release);
}

}  // namespace vx_team
