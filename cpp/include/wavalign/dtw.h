// Nearest template under dynamic time warping (the built-in world's closed-vocabulary
// recognizer; any caller with frame features can use it).
//
// For query q (Tq frames of C features) and template t (L frames), a path runs from
// (0, 0) to (Tq - 1, L - 1); each step advances the query by one frame and the template by
// 0, 1 or 2 frames, so the query may be slower than a template by any factor or up to twice
// as fast. A path's cost is the sum over its cells of the Euclidean distance between the two
// frames; distance(q, t) = min path cost / Tq, or +inf when no path exists (L < 1,
// L - 1 > 2 (Tq - 1), or Tq < 1).
//
// dtw_nearest gives, per query, the template of least distance (ties: the lowest index) and
// that distance, exactly: templates are visited in order of a lower bound (the first and
// last cells every path holds) and a template is abandoned once a full row of its cost matrix
// exceeds the best total so far, which never discards a template that could win, because
// every path visits every row once and costs are >= 0. Only the band of cells that can lie on
// a complete path is computed. Frame distances are summed in float32 in channel order, path
// sums in double. best_index = -1 and best_distance = +inf when no template is reachable.
//
// Optional hints change only the visiting order, never the result: with template_groups
// ([K], e.g. the sentence each template says) and hint_groups ([Q], -1 = none), the templates
// of a query's hinted group are visited first, so a good first bound abandons the rest early
// (the recognizer hints the sentence of the response's own text channel).
#pragma once
#include <cstdint>

namespace wavalign {

struct DtwNearestArgs {
  const float* queries = nullptr;           // [Q, Tq_max, C], frames past a query's length ignored
  const int64_t* query_lengths = nullptr;   // [Q], each in [0, Tq_max]
  const float* templates = nullptr;         // [K, Tt_max, C]
  const int64_t* template_lengths = nullptr;  // [K], each in [0, Tt_max]
  const int64_t* template_groups = nullptr;   // [K] or null (no hints)
  const int64_t* hint_groups = nullptr;       // [Q] or null; -1: no hint for that query
  int64_t n_queries = 0;
  int64_t query_frames = 0;     // Tq_max
  int64_t n_templates = 0;
  int64_t template_frames = 0;  // Tt_max
  int64_t channels = 0;         // C

  int64_t* best_index = nullptr;    // [Q] out
  float* best_distance = nullptr;   // [Q] out
};

// Queries run in parallel on the wavalign thread pool.
void dtw_nearest_cpu(const DtwNearestArgs& args);

}  // namespace wavalign
