// A small persistent thread pool for CPU ops: parallel_for over independent items.
// No OpenMP on purpose: torch ships its own OpenMP runtime and two in one process
// oversubscribe cores or clash.
#pragma once
#include <cstdint>
#include <functional>

namespace wavalign {

// Runs body(item, worker) for item in [0, n_items) on up to get_num_threads() threads
// (the caller is worker 0). Items are handed out dynamically, so uneven rows balance.
// Runs inline when n_items == 1 or parallelism is not worth it (min_items_per_thread).
void parallel_for(int64_t n_items, const std::function<void(int64_t item, int worker)>& body,
                  int64_t min_items_per_thread = 1);

}  // namespace wavalign
