"""A lone tile (B <= 16: a decision's latency) shared by the core's threads: its layers' columns
split between the calling thread and the pool's workers, a worker joining whatever is left when
it wakes. The sums are the same whoever computes a column, so the allocations equal those of one
thread to the bit, at every level, in both precisions, however many threads share the tile."""

import threading
import time

import numpy as np
import pytest
from models import make_gdm

from aigxctl import _core, core, fused
from aigxctl.diffusion import STEP_CONSTANTS
from aigxctl.errors import UserError

LEVELS = core.isa_available()

pytestmark = pytest.mark.usefixtures("restore_isa")


@pytest.fixture
def restore_threads():
    before, how = core.num_threads(), core.lone_tile()
    core.set_lone_tile("shared")  # the way under test (auto may find one thread faster here)
    yield
    core.set_num_threads(before)
    core.set_lone_tile(how)


def sample(sampler, gains, threads, **kw):
    core.set_num_threads(threads)
    return sampler.sample(gains, 0.2, **kw)


# 128: two shares of 64 (the narrowest shared); 200 and 300: shares that are not a multiple of
# the vector width, the last ending in a scalar tail; 256: the usual width.
@pytest.mark.parametrize("hidden", [128, 200, 256, 300])
@pytest.mark.parametrize("precision", ["f32", "bf16"])
def test_a_shared_tile_equals_one_thread(hidden, precision, restore_threads):
    sampler = make_gdm(20, hidden, 6, "eps", seed=3).fused_sampler()
    rng = np.random.default_rng(hidden)
    gains = rng.uniform(0.5, 8, (16, 20))
    z = rng.standard_normal((7, 16, 20)).astype(np.float32)
    for level in LEVELS:
        core.set_isa(level)
        for rows in (1, 3, 16):
            for mode in ("ddim", "ancestral"):
                kw = dict(mode=mode, noise=z[:, :rows], precision=precision)
                alone = sample(sampler, gains[:rows], 1, **kw)
                for threads in (2, 3, 5):
                    shared = sample(sampler, gains[:rows], threads, **kw)
                    np.testing.assert_array_equal(shared, alone, err_msg=f"{level} {threads}")
            # Philox noise drawn in the core too.
            alone = sample(sampler, gains[:rows], 1, mode="ancestral", seed=11)
            shared = sample(sampler, gains[:rows], 2, mode="ancestral", seed=11)
            np.testing.assert_array_equal(shared, alone)


# A team keeps one second-layer slot per step: 1 step (the output layer only the last's), 40,
# 80 and 160 steps of 16 rows (past the slots' 1 MB: 80 in f32, 160 in bf16, whose slots are
# half the size: run alone even when sharing is asked for).
@pytest.mark.parametrize("steps", [1, 40, 80, 160])
@pytest.mark.parametrize("precision", ["f32", "bf16"])
def test_a_shared_tile_of_any_length_equals_one_thread(steps, precision, restore_threads):
    sampler = make_gdm(20, 256, steps, "x0", seed=8).fused_sampler()
    rng = np.random.default_rng(steps)
    gains = rng.uniform(0.5, 8, (16, 20))
    for rows in (1, 16):
        for mode in ("ddim", "ancestral"):
            kw = dict(mode=mode, seed=5, precision=precision)
            alone = sample(sampler, gains[:rows], 1, **kw)
            for threads in (2, 3):
                shared = sample(sampler, gains[:rows], threads, **kw)
                np.testing.assert_array_equal(shared, alone, err_msg=f"{rows} {mode} {threads}")


def test_a_worker_that_wakes_late_joins_what_is_left(restore_threads):
    # After a pause the pool's workers sleep, so the caller starts the tile alone and a worker
    # joins mid-way (or not at all): the result cannot depend on when it came.
    sampler = make_gdm(20, 256, 6, "x0", seed=4).fused_sampler()
    gains = np.random.default_rng(1).uniform(0.5, 8, (1, 20))
    expected = sample(sampler, gains, 1, mode="ddim", seed=0)
    core.set_num_threads(2)
    for pause in (0.0, 0.0002, 0.0005, 0.001, 0.002) * 4:
        time.sleep(pause)
        np.testing.assert_array_equal(sampler.sample(gains, 0.2, mode="ddim", seed=0), expected)


def test_an_invalid_gain_in_a_shared_tile_is_named(restore_threads):
    sampler = make_gdm(20, 256, 6, "eps", seed=5).fused_sampler()
    gains = np.random.default_rng(2).uniform(0.5, 8, (5, 20))
    gains[3, 7] = np.nan
    core.set_num_threads(2)
    with pytest.raises(UserError, match=r"gains\[3, 7\]"):
        sampler.sample(gains, 0.2, mode="ddim", seed=0)
    gains[3, 7] = 1.0  # the tile's state is not left behind for the next call
    ok = sampler.sample(gains, 0.2, mode="ddim", seed=0)
    np.testing.assert_array_equal(ok, sample(sampler, gains, 1, mode="ddim", seed=0))


def test_python_threads_sharing_the_pool_get_their_own_results(restore_threads):
    # Jobs are serialised: lone tiles (shared by the pool) and batches from several Python
    # threads at once each get what they get alone.
    sampler = make_gdm(20, 256, 6, "eps", seed=6).fused_sampler()
    rng = np.random.default_rng(3)
    inputs = [rng.uniform(0.5, 8, (b, 20)) for b in (1, 1, 7, 64, 1, 300)]
    core.set_num_threads(2)
    expected = [sampler.sample(g, 0.2, mode="ddim", seed=i) for i, g in enumerate(inputs)]
    errors = []

    def run(i):
        try:
            for _ in range(30):
                got = sampler.sample(inputs[i], 0.2, mode="ddim", seed=i)
                np.testing.assert_array_equal(got, expected[i])
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and not any(t.is_alive() for t in threads)


def test_every_way_of_running_a_lone_tile_gives_the_same(restore_threads):
    sampler = make_gdm(20, 256, 6, "eps", seed=7).fused_sampler()
    gains = np.random.default_rng(4).uniform(0.5, 8, (4, 20))
    core.set_num_threads(2)
    out = {}
    for how in ("shared", "alone", "auto"):
        core.set_lone_tile(how)
        assert core.lone_tile() == how
        # auto tries both ways in its first calls, then keeps the faster: the same results.
        out[how] = [sampler.sample(gains, 0.2, mode="ancestral", seed=s) for s in range(6)]
    for how in ("alone", "auto"):
        for a, b in zip(out[how], out["shared"], strict=True):
            np.testing.assert_array_equal(a, b)


def test_lone_tile_refuses_an_unknown_way():
    with pytest.raises(UserError, match="lone tile must be one of auto, shared, alone"):
        core.set_lone_tile("both")


def passthrough_sampler(m: int, hidden: int) -> fused.FusedSampler:
    """One DDIM step whose update returns its start sample (all weights 0, so x0 = 0, and
    sqrt_abar_prev = 0, inv_sqrt_1m_abar = sqrt_1m_abar_prev = 1): the allocation is the map of
    the given start noise, wide enough (hidden) for a lone tile to be shared."""
    layout = core.pack_layout(m, hidden, 1)
    pack = np.zeros(layout["total"], dtype=np.float32)
    pack[layout["cond_std"] : layout["cond_std"] + m] = 1.0
    for name in ("inv_sqrt_1m_abar", "sqrt_1m_abar_prev"):
        pack[layout["consts"] + STEP_CONSTANTS.index(name)] = 1.0
    return fused.FusedSampler(pack=pack, m=m, hidden=hidden, steps=1, pred="x0")


@pytest.mark.parametrize("rows", [1, 9, 40])  # a shared lone tile; tiles on both threads
def test_every_thread_runs_the_update_in_the_callers_floating_point_mode(rows, restore_threads):
    # Subnormal start samples: with the caller in flush-to-zero / denormals-are-zero they read
    # as 0 in the update and the map (an equal split), without it they keep their proportions.
    # Whichever thread runs a row's update, it must see the caller's mode.
    m = 8
    sampler = passthrough_sampler(m, 256)
    x = np.linspace(1e-40, 8e-40, m, dtype=np.float32) * np.ones((rows, 1), np.float32)
    noise = np.stack([x, np.zeros_like(x)])
    gains = np.ones((rows, m))
    before = core.fp_mode()
    results = {}
    try:
        for threads in (1, 2):
            core.set_num_threads(threads)  # workers start in the first pass's mode, the default
            for flush in (False, True, False):
                _core.set_fp_mode(before | 0x8040 if flush else before)
                for _ in range(20):  # workers awake and asleep, any of them taking the update
                    got = sampler.sample(gains, 0.2, mode="ddim", noise=noise)
                    results.setdefault((flush, threads), got)
                    np.testing.assert_array_equal(got, results[flush, threads])
            _core.set_fp_mode(before)
    finally:
        _core.set_fp_mode(before)
    for flush in (False, True):
        np.testing.assert_array_equal(results[flush, 2], results[flush, 1])
    if before & 0x1F80 == 0x1F80:  # x86's MXCSR, whose FTZ | DAZ bits were set
        assert not np.array_equal(results[False, 1], results[True, 1])  # the mode mattered
