// Implementation of the core's CPU thread pool (see thread_pool.h).
#include "thread_pool.h"

#include <pthread.h>

#include <algorithm>
#include <new>

namespace aigx {

ThreadPool& ThreadPool::instance() {
  static ThreadPool pool;
  return pool;
}

ThreadPool::ThreadPool() {
  const unsigned hw = std::thread::hardware_concurrency();
  num_threads_ = hw == 0 ? 1 : static_cast<int>(hw);
  // Once per process: the pool is a singleton, and a child keeps both the pool and the
  // registration, so a grandchild is handled the same way.
  pthread_atfork(&ThreadPool::before_fork, &ThreadPool::after_fork_in_parent,
                 &ThreadPool::after_fork_in_child);
}

// Safe in a forked child too: after_fork_in_child left no workers to join.
ThreadPool::~ThreadPool() { stop_workers(); }

void ThreadPool::before_fork() {
  // Wait for the job in flight, if any, and keep the next one from starting: the child then
  // inherits a pool between jobs (no fn_ pointing into another thread's stack). Fork is never
  // called from inside a job, so the forking thread cannot already hold job_mutex_.
  instance().job_mutex_.lock();
}

void ThreadPool::after_fork_in_parent() { instance().job_mutex_.unlock(); }

void ThreadPool::after_fork_in_child() {
  // Only the forking thread exists in the child. The workers' std::thread objects name threads
  // of the parent: destroying them calls std::terminate (they are joinable), and joining or
  // detaching them is undefined, so the vector is abandoned without its destructor (its buffer
  // leaks, once per fork). The locks and condition variables are rebuilt in place rather than
  // unlocked: a worker may have held mutex_ at the fork, and a condition variable still counts
  // the parent's waiters. Nothing here allocates or starts a thread (not safe in an atfork
  // handler); the next job big enough to split starts the child's own workers.
  ThreadPool& p = instance();
  new (&p.workers_) std::vector<std::thread>();
  new (&p.job_mutex_) std::mutex();  // held by before_fork in the parent
  new (&p.mutex_) std::mutex();
  new (&p.wake_) std::condition_variable();
  new (&p.done_) std::condition_variable();
  p.started_ = false;
  p.stopping_ = false;
  p.busy_ = 0;
  p.fn_ = nullptr;
  p.n_ = 0;
  p.next_.store(0);
}

void ThreadPool::set_num_threads(int n) {
  n = std::max(1, n);
  std::lock_guard<std::mutex> job(job_mutex_);
  if (n == num_threads_) return;
  stop_workers();
  num_threads_ = n;  // the next parallel job starts n - 1 workers
}

void ThreadPool::start_workers(int n_workers) {
  // Called under job_mutex_, so generation_ is the last finished job: a new worker waits for the
  // next one (reading generation_ from the new thread instead would race with a job posted
  // before the thread runs, and lose it). Tops up to n_workers, so a call that failed to create
  // a thread (std::system_error) is completed by the next one.
  stopping_ = false;
  const uint64_t current = generation_;
  for (auto i = static_cast<int>(workers_.size()); i < n_workers; ++i)
    workers_.emplace_back([this, current] { worker_loop(current); });
  started_ = true;
}

void ThreadPool::stop_workers() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
  workers_.clear();
  started_ = false;
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
  if (num_threads_ < 2 || max_chunks < 2) {
    fn(0, n);
    return;
  }
  if (!started_) start_workers(num_threads_ - 1);
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
