// CPU group statistics and advantage broadcast (contract in wavalign/group_stats.h).
#include "wavalign/group_stats.h"

#include "wavalign/group_stats_impl.h"
#include "wavalign/thread_pool.h"

namespace wavalign {

void group_stats_cpu(const GroupStatsArgs& args) {
  parallel_for(args.n_groups, [&](int64_t g, int) { group_stats_one(args, g); },
               /*min_items_per_thread=*/256);
}

void broadcast_advantages_cpu(const BroadcastAdvantagesArgs& a) {
  parallel_for(a.n_rows, [&](int64_t row, int) {
    for (int64_t t = 0; t < a.n_tokens; ++t) broadcast_one_row(a, row, t);
  }, /*min_items_per_thread=*/64);
}

}  // namespace wavalign
