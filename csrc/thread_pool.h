// The core's one CPU thread pool: the calling thread and a few persistent workers share a job.
// It is a plain std::thread pool on purpose: PyTorch already brings an OpenMP runtime, and a
// second one in the same process fights it for cores. Python sets the size
// (aigxctl.core.set_num_threads); calls are serialised so concurrent Python threads (the GIL is
// released during compute) cannot interleave jobs.
// Workers run a job in the caller's floating-point mode (fp_mode.h), so its results do not
// depend on which thread ran which part. An exception thrown by work() on a worker is rethrown
// by share() on the caller, once the job has ended.
// A job never waits for a worker to wake: the caller starts on it at once, and a worker joins
// whatever is left when it arrives (the job's work is taken from shared counters, so it is done
// the same whoever does it). After a job, workers spin for a short while before they sleep, so
// back-to-back calls (one decision after another) find them awake.
// Workers start on the first job big enough to share, and again after a resize or a fork: a
// forked child (the default for multiprocessing and DataLoader workers on Linux) inherits the
// pool but none of its threads, so fork handlers hold the pool still across fork() and rebuild
// it in the child.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace aigx {

// One step of a busy wait (a pause hint to the core; the other hyper-thread gets the slot).
void spin_pause();

class ThreadPool {
 public:
  static ThreadPool& instance();

  // Total threads a job may use, the caller included (>= 1).
  int num_threads() const { return num_threads_.load(std::memory_order_relaxed); }
  void set_num_threads(int n);

  // Calls fn(begin, end) on disjoint ranges covering [0, n). Ranges hold at least `grain`
  // items, in up to `chunks_per_thread` ranges per thread handed out as threads come for them;
  // small jobs run inline on the caller, with no hand-off cost.
  void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn,
                    int chunks_per_thread = 4);

  // Calls work() on the calling thread and on each worker that joins while the caller's call
  // runs (none, some or all of them, each at most once); returns when every call has returned.
  // work() must take its share from state shared by the calls and finish the job when it runs
  // alone, and must not leave a share it took unfinished (others may wait for it) when it
  // throws. With one thread it is the caller's call alone.
  void share(const std::function<void()>& work);

  ~ThreadPool();

 private:
  ThreadPool();
  void start_workers(int n_workers);
  void stop_workers();
  void worker_loop(uint64_t seen);
  // Waits for a job newer than `seen` (spinning, then asleep); false when stopping.
  bool wait_for_job(uint64_t seen);

  // pthread_atfork handlers, registered once by the constructor.
  static void before_fork();
  static void after_fork_in_parent();
  static void after_fork_in_child();

  std::atomic<int> num_threads_{1};
  bool started_ = false;  // workers_ holds num_threads_ - 1 running workers
  std::vector<std::thread> workers_;
  std::mutex job_mutex_;  // one job at a time
  uint64_t generation_ = 0;  // the last job posted (under job_mutex_)
  const std::function<void()>* work_ = nullptr;
  uint64_t work_fp_mode_ = 0;  // the caller's fp_mode() for work_
  std::mutex error_mutex_;
  std::exception_ptr error_;  // the first exception a worker's work() threw
  // generation << 1 | open: workers join the job while it is open.
  alignas(64) std::atomic<uint64_t> state_{0};
  // Workers inside a job's work (or about to check whether it is still open).
  alignas(64) std::atomic<int> active_{0};
  alignas(64) std::atomic<int> sleepers_{0};
  std::atomic<bool> stopping_{false};
  std::mutex mutex_;  // guards the sleep of workers_
  std::condition_variable wake_;
};

}  // namespace aigx
