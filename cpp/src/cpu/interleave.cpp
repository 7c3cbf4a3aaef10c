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

void interleave_allowed_mask_cpu(const InterleaveArgs& args, int32_t set, int8_t* out_mask) {
  for (int64_t id = 0; id < args.vocab; ++id) out_mask[id] = interleave_allows(args, set, id) ? 1 : 0;
}

}  // namespace wavalign
