// The core's one CPU thread pool. Rows are split into chunks that the calling thread and a few
// persistent workers take from an atomic counter. It is a plain std::thread pool on purpose:
// PyTorch already brings an OpenMP runtime, and a second one in the same process fights it for
// cores. Python sets the size (aigxctl.core.set_num_threads); calls are serialised so concurrent
// Python threads (the GIL is released during compute) cannot interleave jobs. Workers start on
// the first job big enough to split, and again after a resize or a fork: a forked child (the
// default for multiprocessing and DataLoader workers on Linux) inherits the pool but none of its
// threads, so fork handlers hold the pool still across fork() and rebuild it in the child.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace aigx {

class ThreadPool {
 public:
  static ThreadPool& instance();

  // Total threads used by parallel_for, the caller included (>= 1).
  int num_threads() const { return num_threads_; }
  void set_num_threads(int n);

  // Calls fn(begin, end) on disjoint ranges covering [0, n). Ranges hold at least `grain`
  // items; small jobs run inline on the caller, with no hand-off cost.
  void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

  ~ThreadPool();

 private:
  ThreadPool();
  void start_workers(int n_workers);
  void stop_workers();
  void worker_loop(uint64_t seen);
  void run_chunks();

  // pthread_atfork handlers, registered once by the constructor.
  static void before_fork();
  static void after_fork_in_parent();
  static void after_fork_in_child();

  int num_threads_ = 1;
  bool started_ = false;  // workers_ holds num_threads_ - 1 running workers
  std::vector<std::thread> workers_;
  std::mutex job_mutex_;  // one job at a time
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  uint64_t generation_ = 0;
  bool stopping_ = false;
  int busy_ = 0;
  const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
  int64_t n_ = 0;
  int64_t chunk_ = 1;
  std::atomic<int64_t> next_{0};
};

}  // namespace aigx
