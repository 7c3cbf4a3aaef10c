// CPU group statistics (contract in wavalign/group_stats.h).
#include "wavalign/group_stats.h"

#include "wavalign/group_stats_impl.h"
#include "wavalign/thread_pool.h"

namespace wavalign {

void group_stats_cpu(const GroupStatsArgs& args) {
  parallel_for(args.n_groups, [&](int64_t g, int) { group_stats_one(args, g); },
               /*min_items_per_thread=*/256);
}

}  // namespace wavalign
