"""Scenarios: each channel model's sample statistics, TOML round trip and errors, determinism.

The statistical checks use fixed seeds, so they cannot flake; their tolerances are several
standard errors wide, so a wrong formula (a missing factor, K mixed up with K + 1) still fails.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from aigxctl import scenarios
from aigxctl.errors import UserError
from aigxctl.scenarios import Group, Scenario

N = 200_000  # x 4 channels: standard errors of the means below ~0.2 % for these models
EXAMPLE = Path(__file__).parent.parent / "examples" / "rainstorm.toml"


def draws(group: Group, seed: int = 0) -> np.ndarray:
    return group.sample(N, np.random.default_rng(seed)).ravel()


def test_builtins_are_the_paper_phases():
    t1, t2 = scenarios.get("t1"), scenarios.get("t2")
    assert (t1.m, t1.total_power, t1.noise) == (20, 0.2, 1.0)
    assert (t2.m, t2.total_power, t2.noise) == (20, 0.2, 1.0)
    g1 = scenarios.draw(t1, 50_000, 0)
    assert g1.shape == (50_000, 20) and g1.dtype == np.float64
    assert g1[:, :10].min() >= 5 and g1[:, :10].max() <= 8
    assert g1[:, 10:].min() >= 3 and g1[:, 10:].max() <= 6
    assert g1[:, :10].mean() == pytest.approx(6.5, rel=0.005)
    assert g1[:, 10:].mean() == pytest.approx(4.5, rel=0.005)
    g2 = t2.sample(50_000, np.random.default_rng(0))
    assert g2.min() >= 1 and g2.max() <= 7
    assert g2.mean() == pytest.approx(4.0, rel=0.005)
    assert set(scenarios.builtin()) == {"t1", "t2"}


def test_uniform_statistics():
    g = draws(Group(4, "uniform", {"low": 2.0, "high": 6.0}))
    assert g.min() >= 2 and g.max() <= 6
    assert g.min() < 2.001 and g.max() > 5.999  # the whole range is used
    assert g.mean() == pytest.approx(4.0, rel=0.005)
    assert g.var() == pytest.approx(16 / 12, rel=0.02)


def test_rayleigh_is_exponential_power():
    g = draws(Group(4, "rayleigh", {"mean": 3.0}))
    assert g.min() >= 0
    assert g.mean() == pytest.approx(3.0, rel=0.01)
    assert g.std() == pytest.approx(3.0, rel=0.02)  # exponential: std = mean
    assert np.mean(g > 3.0) == pytest.approx(np.exp(-1), abs=0.005)  # P(g > mean) = 1/e


@pytest.mark.parametrize("k", [0.0, 1.0, 10.0])
def test_rician_mean_power_and_variance(k):
    g = draws(Group(4, "rician", {"k_factor": k, "mean": 2.0}))
    assert g.min() >= 0
    assert g.mean() == pytest.approx(2.0, rel=0.01)
    # Var |h|^2 = mean^2 (1 + 2K) / (K + 1)^2: K = 0 is Rayleigh, large K tends to a constant.
    assert g.var() == pytest.approx(4.0 * (1 + 2 * k) / (k + 1) ** 2, rel=0.03)


@pytest.mark.parametrize("m", [0.5, 2.5])
def test_nakagami_is_gamma_power(m):
    g = draws(Group(4, "nakagami", {"m": m, "mean": 4.0}))
    assert g.min() >= 0
    assert g.mean() == pytest.approx(4.0, rel=0.01)
    assert g.var() == pytest.approx(16.0 / m, rel=0.03)


def test_attenuation_and_shadowing():
    base = draws(Group(2, "uniform", {"low": 1.0, "high": 3.0}), seed=1)
    faded = draws(Group(2, "uniform", {"low": 1.0, "high": 3.0}, attenuation_db=10.0), seed=1)
    np.testing.assert_allclose(faded, base / 10.0, rtol=1e-12)
    shadow = draws(Group(2, "uniform", {"low": 1.0, "high": 1.0 + 1e-9}, shadowing_db=6.0))
    db = 10 * np.log10(shadow)
    assert db.mean() == pytest.approx(0.0, abs=0.05)
    assert db.std() == pytest.approx(6.0, rel=0.01)


def test_scenario_groups_fill_their_columns():
    s = scenarios.get(EXAMPLE)
    assert s.m == 20 and [g.model for g in s.groups] == ["rician", "nakagami"]
    g = scenarios.draw(s, 100_000, 3)
    assert g.shape == (100_000, 20) and np.all(g >= 0) and np.all(np.isfinite(g))
    # Rician mean 6.5 under 3 dB of fade; Nakagami mean 4.5 with shadowing (its mean power is
    # scaled by E[10^(N(0, 2^2)/10)] = exp((2 ln10 / 10)^2 / 2)).
    assert g[:, :10].mean() == pytest.approx(6.5 * 10**-0.3, rel=0.01)
    assert g[:, 10:].mean() == pytest.approx(4.5 * np.exp((0.2 * np.log(10)) ** 2 / 2), rel=0.01)


def test_toml_round_trip(tmp_path: Path):
    for s in (*scenarios.builtin().values(), scenarios.get(EXAMPLE)):
        assert Scenario.from_dict(s.to_dict()) == s
        path = tmp_path / f"{s.name}.toml"
        path.write_text(s.to_toml())
        assert scenarios.get(path) == s
    odd = Scenario("q", (Group(3, "rayleigh", {"mean": 1e-5}, attenuation_db=-2.5),),
                   total_power=3.0, noise=1e-3, description='say "hi" \\ ünïcode')  # fmt: skip
    path = tmp_path / "odd.toml"
    path.write_text(odd.to_toml(), encoding="utf-8")
    assert scenarios.get(path) == odd
    assert hash(odd) == hash(scenarios.get(path))  # frozen, so usable as a dict key


def test_with_power():
    s = scenarios.get("t1").with_power(1.5)
    assert s.total_power == 1.5 and s.groups == scenarios.get("t1").groups
    with pytest.raises(UserError, match="total power"):
        s.with_power(0)


def test_draws_are_deterministic_and_chunk_independent():
    s = scenarios.get(EXAMPLE)  # two groups, two models, shadowing: every stream kind
    n = scenarios.CHUNK_ROWS + 5000  # spans two generator blocks
    a = scenarios.draw(s, n, seed=5)
    np.testing.assert_array_equal(a, scenarios.draw(s, n, seed=5))
    assert not np.array_equal(a, scenarios.draw(s, n, seed=6))
    for chunk in (7, 999, scenarios.CHUNK_ROWS, 100_000):
        parts = list(scenarios.draw_chunks(s, n, 5, chunk=chunk))
        assert all(len(p) == chunk for p in parts[:-1]) and len(parts[-1]) <= chunk
        np.testing.assert_array_equal(np.concatenate(parts), a)
    # The first k rows of a longer draw are the draw of k rows.
    np.testing.assert_array_equal(scenarios.draw(s, 1000, 5), a[:1000])
    np.testing.assert_array_equal(scenarios.draw(s, n - 1, 5), a[:-1])


def test_every_model_draws_row_by_row():
    for group in (
        Group(3, "uniform", {"low": 1.0, "high": 2.0}),
        Group(3, "rayleigh", {"mean": 2.0}, shadowing_db=3.0),
        Group(3, "rician", {"k_factor": 2.0, "mean": 2.0}),
        Group(3, "nakagami", {"m": 0.7, "mean": 2.0}, shadowing_db=1.0),
    ):
        s = Scenario("one", (group,))
        np.testing.assert_array_equal(scenarios.draw(s, 10, 9), scenarios.draw(s, 500, 9)[:10])


def test_bad_seeds_and_counts():
    s = scenarios.get("t1")
    with pytest.raises(UserError, match="seed must be an integer >= 0"):
        scenarios.draw(s, 10, -1)
    with pytest.raises(UserError, match="samples must be >= 0"):
        list(scenarios.draw_chunks(s, -5, 0))
    assert scenarios.draw(s, 0, 0).shape == (0, 20)


GROUP = '[[groups]]\nchannels = 2\nmodel = "rayleigh"\nmean = 1\n'
BAD = {
    "unknown model": (
        '[[groups]]\nchannels = 2\nmodel = "foo"\n',
        "groups[0].model: unknown model 'foo' (choose uniform, rayleigh, rician, nakagami)",
    ),
    "unknown model, second group": (
        GROUP + '[[groups]]\nchannels = 2\nmodel = "rice"\n',
        "groups[1].model: unknown model 'rice'",
    ),
    "missing model": ("[[groups]]\nchannels = 2\n", "groups[0].model: missing"),
    "negative range": (
        '[[groups]]\nchannels = 2\nmodel = "uniform"\nlow = -1\nhigh = 2\n',
        "groups[0].low: must be >= 0",
    ),
    "inverted range": (
        '[[groups]]\nchannels = 2\nmodel = "uniform"\nlow = 3\nhigh = 2\n',
        "groups[0].high: must be > low",
    ),
    "zero mean": (
        '[[groups]]\nchannels = 2\nmodel = "rayleigh"\nmean = 0\n',
        "groups[0].mean: must be > 0",
    ),
    "negative K": (
        '[[groups]]\nchannels = 2\nmodel = "rician"\nk_factor = -1\nmean = 1\n',
        "groups[0].k_factor: must be >= 0",
    ),
    "Nakagami m below 1/2": (
        '[[groups]]\nchannels = 2\nmodel = "nakagami"\nm = 0.3\nmean = 1\n',
        "groups[0].m: must be >= 0.5",
    ),
    "negative shadowing": (GROUP + "shadowing_db = -2\n", "groups[0].shadowing_db: must be >= 0"),
    "text for a number": (
        '[[groups]]\nchannels = 2\nmodel = "rayleigh"\nmean = "big"\n',
        "groups[0].mean: must be a number, got 'big'",
    ),
    "infinite": (
        '[[groups]]\nchannels = 2\nmodel = "rayleigh"\nmean = inf\n',
        "groups[0].mean: must be finite",
    ),
    "missing parameter": (
        '[[groups]]\nchannels = 2\nmodel = "rayleigh"\n',
        "groups[0].mean: missing",
    ),
    "stray parameter": (
        GROUP + "k_factor = 2\n",
        "groups[0].k_factor: not a parameter of rayleigh",
    ),
    "missing channels": (
        '[[groups]]\nmodel = "rayleigh"\nmean = 1\n',
        "groups[0].channels: missing",
    ),
    "fractional channels": (
        '[[groups]]\nchannels = 2.5\nmodel = "rayleigh"\nmean = 1\n',
        "groups[0].channels: must be an integer >= 1",
    ),
    "no groups": ('name = "x"\n', "groups: missing"),
    "groups not tables": ("groups = [1, 2]\n", "groups[0]: must be a table"),
    "groups not an array": ("groups = 3\n", "groups: must be a non-empty array"),
    "M does not add up": (
        'channels = 5\n[[groups]]\nchannels = 2\nmodel = "rayleigh"\nmean = 1\n',
        "channels: is 5 but the groups add up to 2",
    ),
    "unknown key": ('colour = "red"\n' + GROUP, "colour: unknown key"),
    "bad power": ("total_power = -1\n" + GROUP, "total_power: must be > 0"),
    "bad noise": ("noise = 0\n" + GROUP, "noise: must be > 0"),
    "bad name": ("name = 3\n" + GROUP, "name: must be a non-empty string"),
    "bad description": ("description = 3\n" + GROUP, "description: must be a string"),
    "not toml": ("[[groups\n", "not valid TOML"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_scenario_files_name_the_key(tmp_path: Path, case):
    text, message = BAD[case]
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(UserError) as info:
        scenarios.get(path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value)
    assert "\n" not in str(info.value)


def test_unreadable_files(tmp_path: Path):
    with pytest.raises(UserError, match="unknown scenario 't9'"):
        scenarios.get("t9")
    with pytest.raises(UserError, match="no such scenario file"):
        scenarios.get(tmp_path / "nope.toml")
    (tmp_path / "dir.toml").mkdir()
    with pytest.raises(UserError, match="is a directory"):
        scenarios.get(tmp_path / "dir.toml")
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(UserError, match="not UTF-8"):
        scenarios.get(binary)


def test_estimate_shows_what_there_is_to_win():
    est = scenarios.estimate(scenarios.get("t1"), 20_000, 0)
    # At P = 0.2 the optimum is ~19.8 % over equal on T1, ~42 % on T2 (docs/architecture.md).
    assert est["optimum_gain_over_equal"] == pytest.approx(0.198, abs=0.01)
    assert est["mean_gain"] == pytest.approx(5.5, rel=0.01)
    est2 = scenarios.estimate(scenarios.get("t2"), 20_000, 0)
    assert est2["optimum_gain_over_equal"] == pytest.approx(0.42, abs=0.02)
