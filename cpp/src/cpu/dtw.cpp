// CPU nearest-template DTW (contract in wavalign/dtw.h).
#include "wavalign/dtw.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <tuple>
#include <vector>

#include "wavalign/thread_pool.h"

namespace wavalign {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// Euclidean distance of two C-feature frames, summed in float in channel order.
inline float frame_distance(const float* a, const float* b, int64_t channels) {
  float sum = 0.0f;
  for (int64_t c = 0; c < channels; ++c) {
    const float d = a[c] - b[c];
    sum += d * d;
  }
  return std::sqrt(sum);
}

// The least path total of one template, or +inf once a row's minimum exceeds `bound`
// (then the template cannot beat the best so far). previous / current: scratch rows of at
// least `length` doubles, reused across templates (stale contents are never read).
double path_total(const float* query, int64_t tq, const float* tmpl, int64_t length, int64_t channels,
                  double bound, std::vector<double>& previous, std::vector<double>& current) {
  const int64_t last = length - 1;
  std::fill(previous.begin(), previous.begin() + length, kInf);
  previous[0] = frame_distance(query, tmpl, channels);  // row 0: only (0, 0) starts a path
  if (previous[0] > bound) return kInf;
  for (int64_t i = 1; i < tq; ++i) {
    // The band of row i: cells reachable from (0, 0) (j <= 2i) that can still reach
    // (tq - 1, last) (j >= last - 2 (tq - 1 - i)).
    const int64_t lo = std::max<int64_t>(0, last - 2 * (tq - 1 - i));
    const int64_t hi = std::min<int64_t>(last, 2 * i);
    const float* q = query + i * channels;
    double row_min = kInf;
    for (int64_t j = lo; j <= hi; ++j) {
      double best = previous[j];
      if (j >= 1) best = std::min(best, previous[j - 1]);
      if (j >= 2) best = std::min(best, previous[j - 2]);
      const double total = best + frame_distance(q, tmpl + j * channels, channels);
      current[j] = total;
      row_min = std::min(row_min, total);
    }
    if (row_min > bound) return kInf;  // every path crosses this row, costs are >= 0
    // Row i + 1 reads [lo' - 2, hi'] with lo <= lo' and hi' <= hi + 2: mark the cells of
    // that window outside this band as unreachable.
    for (int64_t j = std::max<int64_t>(0, lo - 2); j < lo; ++j) current[j] = kInf;
    for (int64_t j = hi + 1; j <= std::min<int64_t>(last, hi + 2); ++j) current[j] = kInf;
    std::swap(previous, current);
  }
  return previous[last];
}

void nearest_one(const DtwNearestArgs& a, int64_t q) {
  const int64_t tq = a.query_lengths[q];
  const float* query = a.queries + q * a.query_frames * a.channels;
  a.best_index[q] = -1;
  a.best_distance[q] = std::numeric_limits<float>::infinity();
  if (tq < 1) return;

  // Lower bound per reachable template: every path holds (0, 0) and (tq - 1, L - 1).
  // Sort key (0 for the hinted group's templates, else 1; bound; index).
  const int64_t hint = (a.hint_groups != nullptr && a.template_groups != nullptr) ? a.hint_groups[q] : -1;
  std::vector<std::tuple<int, double, int64_t>> order;
  order.reserve(a.n_templates);
  int64_t longest = 0;
  for (int64_t k = 0; k < a.n_templates; ++k) {
    const int64_t length = a.template_lengths[k];
    if (length < 1 || length - 1 > 2 * (tq - 1)) continue;
    const float* tmpl = a.templates + k * a.template_frames * a.channels;
    double bound = frame_distance(query, tmpl, a.channels);
    if (tq > 1)
      bound += frame_distance(query + (tq - 1) * a.channels, tmpl + (length - 1) * a.channels, a.channels);
    const int first = (hint >= 0 && a.template_groups[k] == hint) ? 0 : 1;
    order.emplace_back(first, bound, k);
    longest = std::max(longest, length);
  }
  std::sort(order.begin(), order.end());

  std::vector<double> previous(longest + 2, kInf), current(longest + 2, kInf);
  double best_total = kInf;
  int64_t best_k = -1;
  for (const auto& [group_rank, bound, k] : order) {
    if (bound > best_total) {
      if (group_rank == 0) continue;  // the hinted group is not sorted against the rest
      break;  // sorted by bound: no later template can reach best_total
    }
    const int64_t length = a.template_lengths[k];
    const double total = path_total(query, tq, a.templates + k * a.template_frames * a.channels, length,
                                    a.channels, best_total, previous, current);
    if (total < best_total || (total == best_total && best_k >= 0 && k < best_k)) {
      best_total = total;
      best_k = k;
    }
  }
  if (best_k >= 0) {
    a.best_index[q] = best_k;
    a.best_distance[q] = static_cast<float>(best_total / static_cast<double>(tq));
  }
}

}  // namespace

void dtw_nearest_cpu(const DtwNearestArgs& args) {
  parallel_for(args.n_queries, [&](int64_t q, int) { nearest_one(args, q); });
}

}  // namespace wavalign
