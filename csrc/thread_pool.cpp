// Implementation of the core's CPU thread pool (see thread_pool.h).
#include "thread_pool.h"

#include <algorithm>

namespace aigx {

ThreadPool& ThreadPool::instance() {
  static ThreadPool pool;
  return pool;
}

ThreadPool::ThreadPool() {
  const unsigned hw = std::thread::hardware_concurrency();
  num_threads_ = hw == 0 ? 1 : static_cast<int>(hw);
  start_workers(num_threads_ - 1);
}

ThreadPool::~ThreadPool() { stop_workers(); }

void ThreadPool::set_num_threads(int n) {
  n = std::max(1, n);
  std::lock_guard<std::mutex> job(job_mutex_);
  if (n == num_threads_) return;
  stop_workers();
  num_threads_ = n;
  start_workers(n - 1);
}

void ThreadPool::start_workers(int n_workers) {
  // Called before any job or under job_mutex_, so generation_ is the last finished job: a new
  // worker waits for the next one (reading generation_ from the new thread instead would race
  // with a job posted before the thread runs, and lose it).
  stopping_ = false;
  const uint64_t current = generation_;
  for (int i = 0; i < n_workers; ++i)
    workers_.emplace_back([this, current] { worker_loop(current); });
}

void ThreadPool::stop_workers() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
  workers_.clear();
}

void ThreadPool::run_chunks() {
  for (;;) {
    const int64_t begin = next_.fetch_add(chunk_);
    if (begin >= n_) return;
    (*fn_)(begin, std::min(n_, begin + chunk_));
  }
}

void ThreadPool::worker_loop(uint64_t seen) {
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] { return stopping_ || generation_ != seen; });
      if (stopping_) return;
      seen = generation_;
    }
    run_chunks();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (--busy_ == 0) done_.notify_one();
    }
  }
}

void ThreadPool::parallel_for(int64_t n, int64_t grain,
                              const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  std::lock_guard<std::mutex> job(job_mutex_);
  const int64_t max_chunks = (n + grain - 1) / grain;
  if (workers_.empty() || max_chunks < 2) {
    fn(0, n);
    return;
  }
  // A few chunks per thread balance uneven rows without much counter traffic.
  const int64_t target = static_cast<int64_t>(num_threads_) * 4;
  const int64_t chunks = std::min(max_chunks, target);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    fn_ = &fn;
    n_ = n;
    chunk_ = (n + chunks - 1) / chunks;
    next_.store(0);
    busy_ = static_cast<int>(workers_.size());
    ++generation_;
  }
  wake_.notify_all();
  run_chunks();
  std::unique_lock<std::mutex> lock(mutex_);
  done_.wait(lock, [&] { return busy_ == 0; });
  fn_ = nullptr;
}

}  // namespace aigx
