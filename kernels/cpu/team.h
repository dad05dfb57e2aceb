// Keeps the threads of an OpenMP team on different CPUs without binding them.
//
// Why: with OMP_PROC_BIND unset, Linux sometimes leaves two threads of a team on one CPU for a
// whole parallel region (seen after another process ran, or after the team slept through an idle
// gap: the region then takes about twice as long). Binding (OMP_PROC_BIND=true) avoids it but pins
// every thread for the life of the process, which a node sharing its CPUs with others should not do.
// spread() instead checks at the start of a region and, on a clash, moves the later thread to
// an allowed CPU no team mate is on, then gives it its full CPU mask back at once, so the scheduler
// stays free to move it afterwards. Set VOXMAP_SPREAD_THREADS=0 to turn it off.
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
inline std::atomic<int> cpu_of[MAX_TEAM];
inline std::atomic<int64_t> regions{0}, moves{0};
inline const bool enabled = [] {
    const char* e = std::getenv("VOXMAP_SPREAD_THREADS");
    return !(e && e[0] == '0');
}();

// Call from every thread of the team, first thing in a parallel region (it holds a barrier).
inline void spread() {
    const int nt = omp_get_num_threads(), me = omp_get_thread_num();
    if (nt < 2 || nt > MAX_TEAM || !enabled) return;
    cpu_of[me].store(sched_getcpu(), std::memory_order_relaxed);
#pragma omp barrier
    if (me == 0) regions.fetch_add(1, std::memory_order_relaxed);
    const int mine = cpu_of[me].load(std::memory_order_relaxed);
    bool clash = false;
    for (int t = 0; t < me; ++t) clash |= cpu_of[t].load(std::memory_order_relaxed) == mine;
    if (!clash) return;
    cpu_set_t allowed;
    if (sched_getaffinity(0, sizeof(allowed), &allowed) != 0) return;
    for (int c = 0; c < CPU_SETSIZE; ++c) {
        if (!CPU_ISSET(c, &allowed)) continue;
        bool used = false;
        for (int t = 0; t < nt; ++t) used |= cpu_of[t].load(std::memory_order_relaxed) == c;
        if (used) continue;
        cpu_set_t one;
        CPU_ZERO(&one);
        CPU_SET(c, &one);
        if (sched_setaffinity(0, sizeof(one), &one) == 0) {    // migrates this thread now
            cpu_of[me].store(c, std::memory_order_relaxed);
            moves.fetch_add(1, std::memory_order_relaxed);
            sched_setaffinity(0, sizeof(allowed), &allowed);
        }
        return;
    }
}

}  // namespace vx_team
