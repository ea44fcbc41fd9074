"""Scenarios: each channel model's sample statistics, TOML round trip and errors, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from aigxctl import scenarios
from aigxctl.errors import UserError
from aigxctl.scenarios import Group, Scenario

N = 200_000  # standard errors below ~0.3 % of the mean for these models


def draws(group: Group, seed: int = 0) -> np.ndarray:
    return group.sample(N, np.random.default_rng(seed)).ravel()


def test_builtins_are_the_paper_phases():
    t1, t2 = scenarios.get("t1"), scenarios.get("t2")
    assert (t1.m, t1.total_power, t1.noise) == (20, 0.2, 1.0)
    g1 = t1.sample(50_000, np.random.default_rng(0))
    assert g1[:, :10].min() >= 5 and g1[:, :10].max() <= 8
    assert g1[:, 10:].min() >= 3 and g1[:, 10:].max() <= 6
    g2 = t2.sample(50_000, np.random.default_rng(0))
    assert g2.min() >= 1 and g2.max() <= 7
    assert g2.mean() == pytest.approx(4.0, rel=0.01)


def test_uniform_statistics():
    g = draws(Group(4, "uniform", {"low": 2.0, "high": 6.0}))
    assert g.min() >= 2 and g.max() <= 6
    assert g.mean() == pytest.approx(4.0, rel=0.01)
    assert g.var() == pytest.approx(16 / 12, rel=0.02)


def test_rayleigh_is_exponential_power():
    g = draws(Group(4, "rayleigh", {"mean": 3.0}))
    assert g.min() >= 0
    assert g.mean() == pytest.approx(3.0, rel=0.01)
    assert g.std() == pytest.approx(3.0, rel=0.02)  # exponential: std = mean


@pytest.mark.parametrize("k", [0.0, 1.0, 10.0])
def test_rician_mean_power_and_variance(k):
    g = draws(Group(4, "rician", {"k_factor": k, "mean": 2.0}))
    assert g.mean() == pytest.approx(2.0, rel=0.01)
    # Var |h|^2 = mean^2 (1 + 2K) / (K + 1)^2
    assert g.var() == pytest.approx(4.0 * (1 + 2 * k) / (k + 1) ** 2, rel=0.03)


def test_nakagami_is_gamma_power():
    g = draws(Group(4, "nakagami", {"m": 2.5, "mean": 4.0}))
    assert g.mean() == pytest.approx(4.0, rel=0.01)
    assert g.var() == pytest.approx(16.0 / 2.5, rel=0.03)


def test_attenuation_and_shadowing():
    base = draws(Group(2, "uniform", {"low": 1.0, "high": 3.0}), seed=1)
    faded = draws(Group(2, "uniform", {"low": 1.0, "high": 3.0}, attenuation_db=10.0), seed=1)
    np.testing.assert_allclose(faded, base / 10.0)
    shadow = draws(Group(2, "uniform", {"low": 1.0, "high": 1.0 + 1e-9}, shadowing_db=6.0))
    db = 10 * np.log10(shadow)
    assert db.mean() == pytest.approx(0.0, abs=0.05)
    assert db.std() == pytest.approx(6.0, rel=0.02)


def test_toml_round_trip_and_example(tmp_path: Path):
    example = Path(__file__).parent.parent / "examples" / "rainstorm.toml"
    s = scenarios.get(example)
    assert s.m == 20 and {g.model for g in s.groups} == {"rician", "nakagami"}
    again = Scenario.from_dict(s.to_dict())
    assert again == s
    g = s.sample(1000, np.random.default_rng(0))
    assert g.shape == (1000, 20) and np.all(g >= 0) and np.all(np.isfinite(g))


def test_draws_are_deterministic_and_chunk_independent():
    s = scenarios.get("t2")
    a = np.concatenate(list(scenarios.draw_chunks(s, 70_000, seed=5)))
    b = np.concatenate(list(scenarios.draw_chunks(s, 70_000, seed=5)))
    c = np.concatenate(list(scenarios.draw_chunks(s, 70_000, seed=6)))
    short = np.concatenate(list(scenarios.draw_chunks(s, 1000, seed=5)))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(short, a[:1000])


BAD = {
    "unknown model": (
        '[[groups]]\nchannels = 2\nmodel = "foo"\n',
        "groups[0].model: unknown model",
    ),
    "negative range": (
        '[[groups]]\nchannels = 2\nmodel = "uniform"\nlow = -1\nhigh = 2\n',
        "groups[0].low: must be >= 0",
    ),
    "inverted range": (
        '[[groups]]\nchannels = 2\nmodel = "uniform"\nlow = 3\nhigh = 2\n',
        "groups[0].high: must be > low",
    ),
    "missing parameter": (
        '[[groups]]\nchannels = 2\nmodel = "rayleigh"\n',
        "groups[0].mean: missing",
    ),
    "missing channels": (
        '[[groups]]\nmodel = "rayleigh"\nmean = 1\n',
        "groups[0].channels: missing",
    ),
    "no groups": ('name = "x"\n', "groups: missing"),
    "M mismatch": (
        'channels = 5\n[[groups]]\nchannels = 2\nmodel = "rayleigh"\nmean = 1\n',
        "channels: is 5 but the groups add up to 2",
    ),
    "unknown key": (
        'colour = "red"\n[[groups]]\nchannels = 1\nmodel = "rayleigh"\nmean = 1\n',
        "colour: unknown key",
    ),
    "bad power": (
        'total_power = -1\n[[groups]]\nchannels = 1\nmodel = "rayleigh"\nmean = 1\n',
        "total_power: must be > 0",
    ),
    "stray parameter": (
        '[[groups]]\nchannels = 1\nmodel = "rayleigh"\nmean = 1\nk_factor = 2\n',
        "groups[0].k_factor: not a parameter of rayleigh",
    ),
    "not toml": ("[[groups\n", "not valid TOML"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_scenario_files_name_the_key(tmp_path: Path, case):
    text, message = BAD[case]
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(UserError) as info:
        scenarios.get(path)
    assert str(path) in str(info.value) and message in str(info.value)


def test_unknown_name_and_missing_file(tmp_path: Path):
    with pytest.raises(UserError, match="unknown scenario 't9'"):
        scenarios.get("t9")
    with pytest.raises(UserError, match="no such scenario file"):
        scenarios.get(tmp_path / "nope.toml")


def test_cli_scenarios(run):
    res = run("scenarios")
    assert res.exit_code == 0 and "t1" in res.stdout and "t2" in res.stdout
    res = run("scenarios", "show", "t1", "--samples", "2000")
    assert res.exit_code == 0 and "optimum over equal" in res.stdout
    res = run("scenarios", "show", "nope")
    assert res.exit_code == 2 and "unknown scenario" in res.stderr
