// CPU interleave state machine (contract in wavalign/interleave.h).
#include "wavalign/interleave.h"

#include "wavalign/interleave_impl.h"
#include "wavalign/thread_pool.h"

namespace wavalign {

void interleave_advance_cpu(const InterleaveArgs& args) {
  // A few integer updates per row: threads pay off only for very large batches.
  parallel_for(args.n_rows, [&](int64_t row, int) { interleave_step_one(args, row); },
               /*min_items_per_thread=*/4096);
}

}  // namespace wavalign
