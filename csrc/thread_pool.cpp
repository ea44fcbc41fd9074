// Implementation of the core's CPU thread pool (see thread_pool.h).
#include "thread_pool.h"

#include <pthread.h>

#include "fp_mode.h"

#include <algorithm>
#include <chrono>
#include <new>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace aigx {
namespace {

// How long a worker stays awake after a job: longer than the gap between two calls of a loop
// driven from Python (tens of microseconds), short enough to cost nothing when the pool idles.
constexpr auto kSpinFor = std::chrono::microseconds(200);

}  // namespace

void spin_pause() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

ThreadPool& ThreadPool::instance() {
  static ThreadPool pool;
  return pool;
}

ThreadPool::ThreadPool() {
  const unsigned hw = std::thread::hardware_concurrency();
  num_threads_.store(hw == 0 ? 1 : static_cast<int>(hw));
  // Once per process: the pool is a singleton, and a child keeps both the pool and the
  // registration, so a grandchild is handled the same way.
  pthread_atfork(&ThreadPool::before_fork, &ThreadPool::after_fork_in_parent,
                 &ThreadPool::after_fork_in_child);
}

// Safe in a forked child too: after_fork_in_child left no workers to join.
ThreadPool::~ThreadPool() { stop_workers(); }

void ThreadPool::before_fork() {
  // Wait for the job in flight, if any, and keep the next one from starting: the child then
  // inherits a pool between jobs (no work_ pointing into another thread's stack). Fork is never
  // called from inside a job, so the forking thread cannot already hold job_mutex_.
  instance().job_mutex_.lock();
}

void ThreadPool::after_fork_in_parent() { instance().job_mutex_.unlock(); }

void ThreadPool::after_fork_in_child() {
  // Only the forking thread exists in the child. The workers' std::thread objects name threads
  // of the parent: destroying them calls std::terminate (they are joinable), and joining or
  // detaching them is undefined, so the vector is abandoned without its destructor (its buffer
  // leaks, once per fork). The locks and the condition variable are rebuilt in place rather
  // than unlocked: a worker may have held mutex_ at the fork, and a condition variable still
  // counts the parent's waiters. Nothing here allocates or starts a thread (not safe in an
  // atfork handler); the next job big enough to share starts the child's own workers.
  ThreadPool& p = instance();
  new (&p.workers_) std::vector<std::thread>();
  new (&p.job_mutex_) std::mutex();  // held by before_fork in the parent
  new (&p.mutex_) std::mutex();
  new (&p.wake_) std::condition_variable();
  p.started_ = false;
  p.stopping_.store(false);
  p.work_ = nullptr;
  new (&p.error_mutex_) std::mutex();
  p.error_ = nullptr;
  p.state_.store(p.generation_ << 1);  // closed: no job is open in the child
  p.active_.store(0);
  p.sleepers_.store(0);
}

void ThreadPool::set_num_threads(int n) {
  n = std::max(1, n);
  std::lock_guard<std::mutex> job(job_mutex_);
  if (n == num_threads_.load()) return;
  stop_workers();
  num_threads_.store(n);  // the next shared job starts n - 1 workers
}

void ThreadPool::start_workers(int n_workers) {
  // Called under job_mutex_ between jobs, so generation_ is the last closed job: a new worker
  // waits for the next one. Tops up to n_workers, so a call that failed to create a thread
  // (std::system_error) is completed by the next one.
  stopping_.store(false);
  const uint64_t current = generation_;
  for (auto i = static_cast<int>(workers_.size()); i < n_workers; ++i)
    workers_.emplace_back([this, current] { worker_loop(current); });
  started_ = true;
}

void ThreadPool::stop_workers() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_.store(true);
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
  workers_.clear();
  started_ = false;
}

bool ThreadPool::wait_for_job(uint64_t seen) {
  auto posted = [&] { return (state_.load() >> 1) != seen; };
  const auto until = std::chrono::steady_clock::now() + kSpinFor;
  for (int i = 1;; ++i) {
    if (stopping_.load(std::memory_order_relaxed)) return false;
    if (posted()) return true;
    spin_pause();
    if (i % 64 == 0 && std::chrono::steady_clock::now() >= until) break;
  }
  // Asleep: share() notifies when it sees a sleeper (counted before the last look at state_,
  // both seq_cst, so either the poster sees the sleeper or the sleeper sees the job).
  std::unique_lock<std::mutex> lock(mutex_);
  sleepers_.fetch_add(1);
  wake_.wait(lock, [&] { return stopping_.load() || posted(); });
  sleepers_.fetch_sub(1);
  return !stopping_.load();
}

void ThreadPool::worker_loop(uint64_t seen) {
  while (wait_for_job(seen)) {
    // Join the job if it is still open. Counted first, then checked (both seq_cst): a caller
    // that closed the job before this check waits for this count to drop, so work_ stays valid
    // for as long as this worker can read it.
    active_.fetch_add(1);
    const uint64_t s = state_.load();
    seen = s >> 1;
    if ((s & 1) != 0) {
      try {
        ScopedFpMode mode(work_fp_mode_);
        (*work_)();
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex_);
        if (!error_) error_ = std::current_exception();
      }
    }
    active_.fetch_sub(1, std::memory_order_release);
  }
}

void ThreadPool::share(const std::function<void()>& work) {
  std::lock_guard<std::mutex> job(job_mutex_);
  const int threads = num_threads_.load();
  if (threads < 2) {
    work();
    return;
  }
  if (!started_) start_workers(threads - 1);
  work_ = &work;
  work_fp_mode_ = fp_mode();
  {
    std::lock_guard<std::mutex> lock(error_mutex_);
    error_ = nullptr;  // one left by a job whose caller threw first
  }
  ++generation_;
  state_.store(generation_ << 1 | 1);
  if (sleepers_.load() > 0) {
    { std::lock_guard<std::mutex> lock(mutex_); }  // a sleeper is in wait() or will see state_
    wake_.notify_all();
  }
  {
    // Closed before going on, an exception included: no worker joins from then on, and those
    // inside are waited for, so none reads `work` after this frame is gone.
    struct Close {
      ThreadPool& p;
      ~Close() {
        p.state_.store(p.generation_ << 1);
        while (p.active_.load(std::memory_order_acquire) != 0) spin_pause();
        p.work_ = nullptr;
      }
    } close{*this};
    work();
  }
  std::exception_ptr error;
  {
    std::lock_guard<std::mutex> lock(error_mutex_);
    std::swap(error, error_);
  }
  if (error) std::rethrow_exception(error);
}

void ThreadPool::parallel_for(int64_t n, int64_t grain,
                              const std::function<void(int64_t, int64_t)>& fn,
                              int chunks_per_thread) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  const int64_t max_chunks = (n + grain - 1) / grain;
  const int threads = num_threads_.load();
  if (threads < 2 || max_chunks < 2) {
    std::lock_guard<std::mutex> job(job_mutex_);  // the same serialisation as a shared job
    fn(0, n);
    return;
  }
  // A few chunks per thread balance uneven rows (and a late worker) without much counter traffic.
  const int64_t chunks =
      std::min(max_chunks, static_cast<int64_t>(threads) * std::max(1, chunks_per_thread));
  const int64_t chunk = (n + chunks - 1) / chunks;
  std::atomic<int64_t> next{0};
  share([&] {
    for (;;) {
      const int64_t begin = next.fetch_add(chunk);
      if (begin >= n) return;
      fn(begin, std::min(n, begin + chunk));
    }
  });
}

}  // namespace aigx
