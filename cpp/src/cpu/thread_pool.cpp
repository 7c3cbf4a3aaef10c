#include "wavalign/thread_pool.h"

#include <sched.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <thread>
#include <vector>

#include "wavalign/sampling.h"

namespace wavalign {
namespace {

int default_num_threads() {
  if (const char* env = std::getenv("WAVALIGN_NUM_THREADS")) {
    const int n = std::atoi(env);
    if (n > 0) return n;
  }
  cpu_set_t mask;
  if (sched_getaffinity(0, sizeof(mask), &mask) == 0) {
    const int n = CPU_COUNT(&mask);
    if (n > 0) return n;
  }
  return std::max(1u, std::thread::hardware_concurrency());
}

// Workers sleep on a condition variable; each job bumps a generation counter.
class ThreadPool {
 public:
  explicit ThreadPool(int n_threads) { resize(n_threads); }
  ~ThreadPool() { stop_workers(); }

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  void resize(int n_threads) {
    stop_workers();
    stopping_ = false;
    for (int w = 1; w < n_threads; ++w) workers_.emplace_back([this, w] { worker_loop(w); });
  }

  void run(int64_t n_items, int n_threads, const std::function<void(int64_t, int)>& body) {
    std::unique_lock<std::mutex> job_lock(job_mutex_);  // one job at a time
    {
      std::lock_guard<std::mutex> lock(mutex_);
      body_ = &body;
      n_items_ = n_items;
      next_item_.store(0);
      active_workers_ = std::min<int>(n_threads, size()) - 1;
      pending_ = active_workers_;
      ++generation_;
    }
    wake_.notify_all();
    drain(0);
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [this] { return pending_ == 0; });
    body_ = nullptr;
  }

 private:
  void drain(int worker) {
    for (;;) {
      const int64_t item = next_item_.fetch_add(1);
      if (item >= n_items_) return;
      (*body_)(item, worker);
    }
  }

  void worker_loop(int worker) {
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return stopping_ || generation_ != seen; });
        if (stopping_) return;
        seen = generation_;
        if (worker > active_workers_) continue;
      }
      drain(worker);
      std::lock_guard<std::mutex> lock(mutex_);
      if (--pending_ == 0) done_.notify_one();
    }
  }

  void stop_workers() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
  }

  std::vector<std::thread> workers_;
  std::mutex job_mutex_, mutex_;
  std::condition_variable wake_, done_;
  const std::function<void(int64_t, int)>* body_ = nullptr;
  int64_t n_items_ = 0;
  std::atomic<int64_t> next_item_{0};
  int active_workers_ = 0;
  int pending_ = 0;
  uint64_t generation_ = 0;
  bool stopping_ = false;
};

std::mutex g_pool_mutex;
int g_num_threads = 0;  // 0: not decided yet

ThreadPool& pool() {
  static ThreadPool instance(get_num_threads());
  return instance;
}

}  // namespace

int get_num_threads() {
  std::lock_guard<std::mutex> lock(g_pool_mutex);
  if (g_num_threads == 0) g_num_threads = default_num_threads();
  return g_num_threads;
}

void set_num_threads(int n) {
  const int wanted = std::max(1, n);
  {
    std::lock_guard<std::mutex> lock(g_pool_mutex);
    g_num_threads = wanted;
  }
  if (pool().size() < wanted) pool().resize(wanted);
}

void parallel_for(int64_t n_items, const std::function<void(int64_t, int)>& body,
                  int64_t min_items_per_thread) {
  if (n_items <= 0) return;
  const int64_t by_work = std::max<int64_t>(1, n_items / std::max<int64_t>(1, min_items_per_thread));
  const int n_threads = static_cast<int>(std::min<int64_t>(get_num_threads(), by_work));
  if (n_threads <= 1) {
    for (int64_t item = 0; item < n_items; ++item) body(item, 0);
    return;
  }
  pool().run(n_items, n_threads, body);
}

}  // namespace wavalign
