#include "thread_pool.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <thread>
#include <vector>

#include "fastxent/fastxent.hpp"

#if defined(__linux__)
#include <sched.h>
#endif
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define FASTXENT_CPU_RELAX() _mm_pause()
#else
#define FASTXENT_CPU_RELAX() std::this_thread::yield()
#endif

namespace fastxent {
namespace {

int cores_available() {
#if defined(__linux__)
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
#endif
  return std::max(1u, std::thread::hardware_concurrency());
}

int default_threads() {
  if (const char* env = std::getenv("FASTXENT_NUM_THREADS")) {
    int n = std::atoi(env);
    if (n > 0) return n;
  }
  return cores_available();
}

std::atomic<int> g_num_threads{0};  // 0 = not yet decided

// How long a worker watches for the next call before it sleeps on the condition
// variable. Waking a sleeping thread (futex) took longer in the KVM guests measured
// than a whole 256 x 1000 call: the caller had taken every grain before its helper
// ran, and 2 threads were no faster than 1 up to ~1M elements. Calls back to back
// (a training loop; the column-split path's two passes) find it awake. Short, so a
// process that calls rarely does not burn a core.
constexpr auto kSpin = std::chrono::microseconds(200);

class Pool {
 public:
  ~Pool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
      stopping_flag_.store(true);
    }
    wake_.notify_all();
    for (auto& t : workers_) t.join();
  }

  void run(int64_t ntasks, detail::RangeFn fn, void* ctx, int nthreads) {
    std::unique_lock<std::mutex> busy(call_mutex_, std::try_to_lock);
    if (!busy.owns_lock() || nthreads <= 1 || ntasks <= 1) {
      fn(ctx, 0, ntasks);
      return;
    }
    nthreads = static_cast<int>(std::min<int64_t>(nthreads, ntasks));
    {
      std::lock_guard<std::mutex> lock(mutex_);
      while (static_cast<int>(workers_.size()) < nthreads - 1)
        workers_.emplace_back([this, id = static_cast<int>(workers_.size())] { worker_loop(id); });
      fn_ = fn;
      ctx_ = ctx;
      ntasks_ = ntasks;
      // Several grains per thread so a thread slowed by a noisy neighbour is covered.
      grain_ = std::max<int64_t>(1, ntasks / (4 * nthreads));
      next_.store(0);
      active_workers_ = nthreads - 1;
      open_ = true;
      generation_.fetch_add(1, std::memory_order_release);
    }
    wake_.notify_all();
    work();
    // Close the call: a worker that wakes only now (the machine is busy) finds
    // nothing to join, so the caller never waits for a thread that did no work.
    std::unique_lock<std::mutex> lock(mutex_);
    open_ = false;
    done_.wait(lock, [this] { return joined_ == 0; });
  }

 private:
  void work() {
    for (;;) {
      int64_t begin = next_.fetch_add(grain_);
      if (begin >= ntasks_) return;
      fn_(ctx_, begin, std::min(ntasks_, begin + grain_));
    }
  }

  void worker_loop(int id) {
    uint64_t seen = 0;
    for (;;) {
      // Watch for the next call a little before sleeping (kSpin).
      const auto until = std::chrono::steady_clock::now() + kSpin;
      for (int i = 0; generation_.load(std::memory_order_acquire) == seen && !stopping_flag_.load(); ++i) {
        FASTXENT_CPU_RELAX();
        if ((i & 63) == 63 && std::chrono::steady_clock::now() > until) break;
      }
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return stopping_ || generation_.load() != seen; });
        if (stopping_) return;
        seen = generation_.load();
        if (id >= active_workers_ || !open_) continue;
        ++joined_;
      }
      work();
      std::lock_guard<std::mutex> lock(mutex_);
      if (--joined_ == 0) done_.notify_one();
    }
  }

  std::mutex call_mutex_;  // one parallel region at a time
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  std::vector<std::thread> workers_;
  bool stopping_ = false;
  std::atomic<bool> stopping_flag_{false};  // stopping_, readable while spinning
  std::atomic<uint64_t> generation_{0};     // written under mutex_; read while spinning too
  int active_workers_ = 0;
  bool open_ = false;  // workers may still join the current call
  int joined_ = 0;     // workers inside the current call
  detail::RangeFn fn_ = nullptr;
  void* ctx_ = nullptr;
  int64_t ntasks_ = 0, grain_ = 1;
  std::atomic<int64_t> next_{0};
};

Pool& pool() {
  static Pool p;
  return p;
}

}  // namespace

int num_threads() {
  int n = g_num_threads.load();
  if (n == 0) {
    n = default_threads();
    g_num_threads.store(n);
  }
  return n;
}

void set_num_threads(int n) { g_num_threads.store(n > 0 ? n : default_threads()); }

namespace detail {
void parallel_for(int64_t ntasks, RangeFn fn, void* ctx) {
  if (ntasks <= 0) return;
  pool().run(ntasks, fn, ctx, num_threads());
}
}  // namespace detail

}  // namespace fastxent
