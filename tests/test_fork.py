"""The core's CPU thread pool across fork(): a forked child (multiprocessing's default on Linux,
PyTorch DataLoader workers) inherits a pool whose worker threads do not exist in it, and possibly
a lock that another thread held at the fork. Every child runs under a timeout and is killed if it
outlives it, so a pool that hangs in a child fails these tests instead of hanging them."""

import multiprocessing as mp
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

from aigxctl import core, fused

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")

TIMEOUT = 60  # seconds a child may take; the work itself takes milliseconds
ROWS, M = 10_000, 20  # big enough to be split across the pool's workers
HIDDEN, STEPS = 32, 6
BETAS = 1.0 - np.exp(-0.1 / 6 - 0.5 * 9.9 * (2 * np.arange(1, 7) - 1) / 36)  # VP, T = 6


@pytest.fixture(autouse=True)
def pool_with_workers():
    """At least two threads, so the parent's calls start workers even on a one-core machine."""
    before = core.num_threads()
    core.set_num_threads(max(2, before))
    yield
    core.set_num_threads(before)


@pytest.fixture(scope="module")
def gains():
    return np.random.default_rng(0).exponential(size=(ROWS, M))


@pytest.fixture(scope="module")
def pack():
    """A random denoiser with real step constants: enough for the sampler to do its full work."""
    layout = core.pack_layout(M, HIDDEN, STEPS)
    pack = (0.1 * np.random.default_rng(1).standard_normal(layout["total"])).astype(np.float32)
    consts = fused.step_constants(BETAS).ravel()
    pack[layout["consts"] : layout["consts"] + consts.size] = consts
    pack[layout["cond_std"] : layout["cond_std"] + M] = 1.0
    return core.cpu_pack(pack, M, HIDDEN, STEPS)


def sample(pack, gains):
    g = gains.astype(np.float32)
    return core.fused_sample(pack, 0, g, 1.0, None, 7, 0)


def _child(conn, fn, args):
    try:
        conn.send(("ok", fn(*args)))
    except BaseException as e:
        conn.send(("error", repr(e)))
    finally:
        conn.close()


def in_fork(fn, *args):
    """fn(*args) in a forked child; its return value, or a failure if it raised or hung."""
    ctx = mp.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_child, args=(send, fn, args))
    p.start()
    send.close()
    try:
        # Read before joining: a large result fills the pipe and blocks the child until read.
        if recv.poll(TIMEOUT):
            got = recv.recv()
            p.join(TIMEOUT)
        else:
            got = ("error", f"no result in {TIMEOUT} s")
    finally:
        if p.is_alive():
            p.kill()
            p.join()
        recv.close()
    assert got[0] == "ok", f"child failed: {got[1]}"
    assert p.exitcode == 0
    return got[1]


def test_child_waterfill_after_parent_started_workers(gains):
    expected = core.waterfill(gains, 1.0)
    np.testing.assert_array_equal(in_fork(core.waterfill, gains, 1.0), expected)


def test_child_fused_sample_after_parent_started_workers(pack, gains):
    expected = sample(pack, gains)
    np.testing.assert_array_equal(in_fork(sample, pack, gains), expected)


def test_child_bf16_sample_after_parent_used_the_tiles(gains):
    """bf16 (on AMX where the CPU has it: the tile permission is the process's, inherited)."""
    layout = core.pack_layout(M, HIDDEN, STEPS)
    flat = (0.1 * np.random.default_rng(2).standard_normal(layout["total"])).astype(np.float32)
    consts = fused.step_constants(BETAS).ravel()
    flat[layout["consts"] : layout["consts"] + consts.size] = consts
    flat[layout["cond_std"] : layout["cond_std"] + M] = 1.0
    bf16 = core.cpu_pack(flat, M, HIDDEN, STEPS, "bf16")
    expected = sample(bf16, gains)
    np.testing.assert_array_equal(in_fork(sample, bf16, gains), expected)


def test_grandchild_forked_from_a_child_that_used_the_pool(gains):
    def child():
        mine = core.waterfill(gains, 1.0)  # restarts the child's workers
        return mine, in_fork(core.waterfill, gains, 1.0)

    expected = core.waterfill(gains, 1.0)
    mine, grandchild = in_fork(child)
    np.testing.assert_array_equal(mine, expected)
    np.testing.assert_array_equal(grandchild, expected)


def test_parent_keeps_working_after_forks(gains):
    expected = core.waterfill(gains, 1.0)
    for _ in range(3):
        np.testing.assert_array_equal(in_fork(core.waterfill, gains, 1.0), expected)
        np.testing.assert_array_equal(core.waterfill(gains, 1.0), expected)


def test_set_num_threads_in_child(gains):
    def child():
        out = []
        for n in (3, 1, 2):
            core.set_num_threads(n)
            out.append((core.num_threads(), core.waterfill(gains, 1.0)))
        return out

    expected = core.waterfill(gains, 1.0)
    got = in_fork(child)
    assert [n for n, _ in got] == [3, 1, 2]
    for _, power in got:
        np.testing.assert_array_equal(power, expected)


def test_fork_while_another_thread_runs_core_calls(gains):
    # The other thread is inside the pool (GIL released) most of the time, so forks land while it
    # holds the pool's locks or its workers are mid-job.
    expected = core.waterfill(gains, 1.0)
    stop = threading.Event()
    errors = []

    def loop():
        try:
            while not stop.is_set():
                np.testing.assert_array_equal(core.waterfill(gains, 1.0), expected)
        except BaseException as e:
            errors.append(e)

    worker = threading.Thread(target=loop)
    worker.start()
    try:
        for _ in range(10):
            np.testing.assert_array_equal(in_fork(core.waterfill, gains, 1.0), expected)
    finally:
        stop.set()
        worker.join(TIMEOUT)
    assert not worker.is_alive() and not errors


def test_forked_child_exits_normally():
    # A child that leaves through the interpreter's normal exit runs the pool's static
    # destructor, which must not wait for the parent's workers. The parent of the fork (run in a
    # fresh interpreter) reaps the child under a deadline and kills it if it hangs.
    script = textwrap.dedent(f"""
        import os, sys, time
        import numpy as np
        from aigxctl import core
        core.set_num_threads(2)
        g = np.random.default_rng(0).exponential(size=({ROWS}, {M}))
        expected = core.waterfill(g, 1.0)
        for use_pool in (False, True):
            pid = os.fork()
            if pid == 0:
                if use_pool:
                    assert (core.waterfill(g, 1.0) == expected).all()
                sys.exit(0)
            deadline = time.monotonic() + {TIMEOUT}
            while (status := os.waitpid(pid, os.WNOHANG))[0] == 0:
                if time.monotonic() > deadline:
                    os.kill(pid, 9)
                    os.waitpid(pid, 0)
                    sys.exit(f"child (use_pool={{use_pool}}) hung")
                time.sleep(0.01)
            if os.waitstatus_to_exitcode(status[1]) != 0:
                sys.exit(f"child (use_pool={{use_pool}}) failed: {{status[1]}}")
        """)
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=3 * TIMEOUT
    )
    assert run.returncode == 0, run.stderr
