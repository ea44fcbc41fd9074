"""Scenario families: ranged parameters, mixtures, the built-in `weather`, their TOML form,
errors, and the per-seed determinism that plain scenarios have."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from aigxctl import data, scenarios
from aigxctl.errors import UserError
from aigxctl.scenarios import Component, Group, Scenario

EXAMPLES = Path(__file__).parent.parent / "examples"
FADING = ("rayleigh", "rician", "nakagami", "shadowing", "rainstorm")
# Rows drawn by the scenarios module before families existed (git: the parent of this change).
T1_PIN = [6.808285747973141, 6.730140568638297, 6.393725300673987]
RAIN_PIN = [0.36383049935083334, 0.22048144419428917, 3.8326034966862093]


def test_ranged_parameter_is_drawn_per_sample():
    s = Scenario("r", (Group(4, "rayleigh", {"mean": (2.0, 8.0)}),))
    assert s.is_family and s.groups[0].ranged == ("mean",)
    g = scenarios.draw(s, 200_000, 0)
    # E[g] = E[mean] = 5; per-row averages spread with the mean (Var = E[mean^2] + Var[mean]).
    assert g.mean() == pytest.approx(5.0, rel=0.01)
    row = g.mean(axis=1)
    assert np.corrcoef(g[:, 0], g[:, 1])[0, 1] > 0.05  # channels share the row's mean
    assert row.var() > g.var() / 4 * 1.2


def test_ranged_uniform_stays_inside_the_ranges():
    s = Scenario("u", (Group(20, "uniform", {"low": (1.0, 5.0), "high": (6.0, 8.0)}),))
    g = scenarios.draw(s, 50_000, 1)
    assert g.min() >= 1.0 and g.max() <= 8.0
    assert g.mean() == pytest.approx((3.0 + 7.0) / 2, rel=0.01)
    # Rows differ in their range: some rows stay well above 1, others well below 5.
    assert (g.min(axis=1) > 4.5).any() and (g.max(axis=1) < 6.5).any()


def test_ranged_attenuation_shadowing_rician_nakagami():
    grp = Group(3, "rician", {"k_factor": (0.0, 10.0), "mean": 2.0}, attenuation_db=(0.0, 6.0))
    g = scenarios.draw(Scenario("a", (grp,)), 100_000, 2)
    # E[10^(-a/10)] for a ~ U[0, 6]: (1 - 10^-0.6) / (0.6 ln 10)
    fade = (1 - 10**-0.6) / (0.6 * np.log(10))
    assert g.mean() == pytest.approx(2.0 * fade, rel=0.01)
    nak = Group(3, "nakagami", {"m": (0.5, 4.0), "mean": (1.0, 3.0)}, shadowing_db=(0.0, 6.0))
    g = scenarios.draw(Scenario("n", (nak,)), 100_000, 3)
    assert np.all(g >= 0) and np.all(np.isfinite(g)) and g.mean() > 2.0


def test_degenerate_range_is_a_number(tmp_path: Path):
    path = tmp_path / "d.toml"
    path.write_text('[[groups]]\nchannels = 2\nmodel = "rayleigh"\nmean = [3, 3]\n')
    assert scenarios.get(path).groups[0] == Group(2, "rayleigh", {"mean": 3.0})
    assert not scenarios.get(path).is_family


def test_mixture_weights_and_parts():
    a = Scenario("lo", (Group(2, "uniform", {"low": 0.0, "high": 1.0}),))
    b = Scenario("hi", (Group(2, "uniform", {"low": 10.0, "high": 11.0}),))
    s = Scenario("mix", (Component(1.0, a), Component(3.0, b)))
    assert s.m == 2 and s.mixture and s.is_family
    g = scenarios.draw(s, 100_000, 4)
    high = g[:, 0] >= 10
    assert np.array_equal(high, g[:, 1] >= 10)  # a row comes from one part, all channels
    assert high.mean() == pytest.approx(0.75, abs=0.01)
    g2 = s.sample(20_000, np.random.default_rng(0))
    assert (g2[:, 0] >= 10).mean() == pytest.approx(0.75, abs=0.02)


def test_family_draws_are_deterministic_and_chunk_independent():
    s = scenarios.get("weather")
    n = scenarios.CHUNK_ROWS + 3000  # two generator blocks
    a = scenarios.draw(s, n, seed=5)
    np.testing.assert_array_equal(a, scenarios.draw(s, n, seed=5))
    assert not np.array_equal(a, scenarios.draw(s, n, seed=6))
    for chunk in (7, 1000, 100_000):
        np.testing.assert_array_equal(
            np.concatenate(list(scenarios.draw_chunks(s, n, 5, chunk))), a
        )
    np.testing.assert_array_equal(scenarios.draw(s, 1000, 5), a[:1000])
    np.testing.assert_array_equal(scenarios.draw(s, n - 1, 5), a[:-1])
    assert np.all(a >= 0) and np.all(np.isfinite(a))


def test_ranged_group_draws_row_by_row():
    for group in (
        Group(3, "uniform", {"low": (0.0, 1.0), "high": (2.0, 3.0)}, shadowing_db=(0.0, 2.0)),
        Group(3, "rician", {"k_factor": (0.0, 5.0), "mean": (1.0, 2.0)}, attenuation_db=(0, 3)),
        Group(3, "nakagami", {"m": (0.6, 2.0), "mean": 2.0}),
    ):
        s = Scenario("one", (group,))
        np.testing.assert_array_equal(scenarios.draw(s, 10, 9), scenarios.draw(s, 500, 9)[:10])


def test_plain_scenarios_draw_what_they_always_drew():
    # Pinned values from before families existed: t1 (seed 0) and the rainstorm (seed 3).
    t1 = scenarios.draw(scenarios.get("t1"), 2, 0)
    rain = scenarios.draw(scenarios.get(EXAMPLES / "rainstorm.toml"), 2, 3)
    np.testing.assert_allclose(t1[0, :3], T1_PIN, rtol=1e-12)
    np.testing.assert_allclose(rain[1, -3:], RAIN_PIN, rtol=1e-12)


def test_weather_is_the_example_file_and_covers_its_parts():
    w = scenarios.get("weather")
    assert w == scenarios.get(EXAMPLES / "weather-family.toml")
    assert (w.m, w.total_power, w.noise) == (20, 0.2, 1.0)
    assert "weather" not in scenarios.builtin() and "weather" in scenarios.families()
    names = [c.scenario.name for c in w.mixture]
    assert names[:2] == ["t1", "t2"] and {"rayleigh", "rician", "nakagami", "rain"} <= set(names)
    assert w.mixture[0].scenario == scenarios.get("t1")
    for name in FADING:  # the example fading scenarios have the family's M, P and sigma^2
        s = scenarios.get(EXAMPLES / f"{name}.toml")
        assert (s.m, s.total_power, s.noise) == (20, 0.2, 1.0)


def test_family_toml_and_json_round_trip(tmp_path: Path):
    ranged = Group(2, "rayleigh", {"mean": (1.0, 2.0)}, shadowing_db=(1.0, 4.0))
    for s in (scenarios.get("weather"), Scenario("r", (ranged,))):
        assert Scenario.from_dict(s.to_dict()) == s
        path = tmp_path / f"{s.name}.toml"
        path.write_text(s.to_toml())
        assert scenarios.get(path) == s
        assert hash(scenarios.get(path)) == hash(s)


def test_describe_shows_ranges_and_parts():
    w = scenarios.get("weather")
    lines = [c.describe() for c in w.groups]
    assert lines[0] == "weight 1: t1 = 10 x U[5, 8] + 10 x U[3, 6]"
    assert "rayleigh = 20 x rayleigh(mean=2..8)" in lines[3]
    assert "attenuation 0..6 dB" in lines[-1] and "shadowing 0..4 dB" in lines[-1]


def test_collect_a_family(tmp_path: Path):
    out = tmp_path / "w.npz"
    data.collect_to_file(scenarios.get("weather"), 3000, 1, out)
    d = data.load(out)
    assert d.gains.shape == (3000, 20) and d.scenario_name == "weather"
    np.testing.assert_array_equal(d.gains, scenarios.draw(scenarios.get("weather"), 3000, 1))
    assert Scenario.from_dict(d.meta["scenario"]) == scenarios.get("weather")


def test_mixture_file_references(tmp_path: Path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "ray.toml").write_text(
        'channels = 20\n[[groups]]\nchannels = 20\nmodel = "rayleigh"\nmean = 4\n'
    )
    path = tmp_path / "fam.toml"
    path.write_text('[[mixture]]\nscenario = "t2"\n[[mixture]]\nscenario = "sub/ray.toml"\n'
                    "weight = 2.5\n")  # fmt: skip
    s = scenarios.get(path)
    assert [c.weight for c in s.mixture] == [1.0, 2.5] and s.mixture[1].scenario.name == "ray"
    assert s.name == "fam" and s.m == 20


GROUP = '[[mixture.groups]]\nchannels = 2\nmodel = "rayleigh"\nmean = 1\n'
BAD = {
    "short range": (
        '[[groups]]\nchannels = 2\nmodel = "rayleigh"\nmean = [1, 2, 3]\n',
        "groups[0].mean: a range must be [low, high], two numbers",
    ),
    "reversed range": (
        '[[groups]]\nchannels = 2\nmodel = "rayleigh"\nmean = [5, 2]\n',
        "groups[0].mean: range [5, 2] is reversed",
    ),
    "range end out of bounds": (
        '[[groups]]\nchannels = 2\nmodel = "nakagami"\nm = [0.2, 2]\nmean = 1\n',
        "groups[0].m[0]: must be >= 0.5",
    ),
    "range end not a number": (
        '[[groups]]\nchannels = 2\nmodel = "rayleigh"\nmean = [1, "x"]\n',
        "groups[0].mean[1]: must be a number",
    ),
    "overlapping uniform ranges": (
        '[[groups]]\nchannels = 2\nmodel = "uniform"\nlow = [1, 5]\nhigh = [4, 8]\n',
        "groups[0].high: must be > low for every sample: 4..8 is not above 1..5",
    ),
    "shadowing range": (
        '[[groups]]\nchannels = 2\nmodel = "rayleigh"\nmean = 1\nshadowing_db = [-1, 2]\n',
        "groups[0].shadowing_db[0]: must be >= 0",
    ),
    "groups and mixture": (
        '[[groups]]\nchannels = 2\nmodel = "rayleigh"\nmean = 1\n[[mixture]]\nscenario = "t1"\n',
        "groups: give [[groups]] or [[mixture]] parts, not both",
    ),
    "mixture not tables": ("mixture = [1]\n", "mixture[0]: must be a table"),
    "empty mixture": ("mixture = []\n", "mixture: must be a non-empty array"),
    "part with neither": ("[[mixture]]\nweight = 1\n", "mixture[0]: needs either scenario"),
    "part with both": (
        '[[mixture]]\nscenario = "t1"\n' + GROUP,
        "mixture[0]: needs either scenario = NAME|FILE or [[mixture.groups]], not both",
    ),
    "bad weight": ('[[mixture]]\nscenario = "t1"\nweight = 0\n', "mixture[0].weight: must be > 0"),
    "unknown part key": (
        '[[mixture]]\nscenario = "t1"\ncolour = 1\n',
        "mixture[0].colour: unknown key",
    ),
    "unknown part scenario": (
        '[[mixture]]\nscenario = "t9"\n',
        "mixture[0].scenario: ",
    ),
    "nested mixture": (
        '[[mixture]]\nscenario = "weather"\n',
        "mixture[0].scenario: 'weather' is itself a mixture",
    ),
    "different M": (
        '[[mixture]]\nscenario = "t1"\n[[mixture]]\n' + GROUP,
        "mixture[1]: has 2 channels, mixture[0] has 20",
    ),
    "different P": (
        'total_power = 1.0\n[[mixture]]\nscenario = "t1"\n',
        "mixture[0].scenario: 't1' has total_power 0.2 but the family 1",
    ),
    "bad inline group": (
        '[[mixture]]\n[[mixture.groups]]\nchannels = 2\nmodel = "foo"\n',
        "mixture[0].groups[0].model: unknown model 'foo'",
    ),
    "inline groups not tables": (
        "[[mixture]]\ngroups = 3\n",
        "mixture[0].groups: must be a non-empty array of [[mixture.groups]] tables",
    ),
    "name beside a reference": (
        '[[mixture]]\nscenario = "t1"\nname = "x"\n',
        "mixture[0].name: comes from the scenario it names",
    ),
    "declared M": (
        'channels = 8\n[[mixture]]\nscenario = "t1"\n',
        "channels: is 8 but its parts have 20 channels",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_family_files_name_the_key(tmp_path: Path, case):
    text, message = BAD[case]
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(UserError) as info:
        scenarios.get(path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value)
    assert "\n" not in str(info.value)


def test_mixture_size_is_bounded(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(scenarios, "MAX_MIXTURE_GROUPS", 3)
    path = tmp_path / "big.toml"
    path.write_text('[[mixture]]\nscenario = "t1"\n[[mixture]]\nscenario = "t1"\n')
    with pytest.raises(UserError, match=r"mixture\[1\]: brings the parts to 4 channel groups"):
        scenarios.get(path)
    monkeypatch.setattr(scenarios, "MAX_MIXTURE", 1)
    with pytest.raises(UserError, match="mixture: has 2 parts, more than the 1 allowed"):
        scenarios.get(path)


def test_estimate_a_family():
    est = scenarios.estimate(scenarios.get("weather"), 20_000, 0)
    assert est["optimum_gain_over_equal"] > 0.3  # storms and deep fades: much to win
