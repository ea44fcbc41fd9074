"""Scenarios: how channel gains are drawn, plus the number of channels M, the power budget P and
the noise power sigma^2.

A scenario is a list of channel groups; each group draws the power gains |h|^2 of some channels
from one channel model and may add a fixed attenuation and log-normal shadowing on top:

* ``uniform``  (``low``, ``high``): g ~ U[low, high] (the paper's T1/T2 phases);
* ``rayleigh`` (``mean``): Rayleigh fading, g ~ Exponential(mean);
* ``rician``   (``k_factor``, ``mean``): a line-of-sight path with K times the power of the
  scattered part, mean power ``mean``;
* ``nakagami`` (``m``, ``mean``): g ~ Gamma(shape m, scale mean / m);
* any group: ``attenuation_db`` (e.g. rain fade) scales g by 10^(-dB/10), and ``shadowing_db``
  multiplies it by 10^(N(0, sigma_dB)/10).

Scenario files are TOML::

    name = "rainstorm"
    description = "T1 channels under 3 dB of rain fade, with shadowing"
    total_power = 0.2          # P, optional (default 0.2)
    noise = 1.0                # sigma^2, optional (default 1)

    [[groups]]
    channels = 10
    model = "rician"
    k_factor = 4.0
    mean = 6.5
    attenuation_db = 3.0

    [[groups]]
    channels = 10
    model = "nakagami"
    m = 2.0
    mean = 4.5
    shadowing_db = 2.0

M is the sum of the groups' ``channels`` (``channels = M`` at the top level is optional and,
when given, must match). Every mistake is a UserError naming the file and the key.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from aigxctl.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["MODELS", "Group", "Scenario", "builtin", "draw_chunks", "estimate", "get"]

# Parameters each model takes (all required), with their lower bounds (exclusive unless noted).
MODELS: dict[str, tuple[str, ...]] = {
    "uniform": ("low", "high"),
    "rayleigh": ("mean",),
    "rician": ("k_factor", "mean"),
    "nakagami": ("m", "mean"),
}
OPTIONAL = ("attenuation_db", "shadowing_db")
CHUNK_ROWS = 1 << 16  # rows drawn per generator, so results never depend on memory limits


@dataclass(frozen=True)
class Group:
    """``channels`` consecutive channels drawn from one model."""

    channels: int
    model: str
    params: dict[str, float] = field(default_factory=dict)
    attenuation_db: float = 0.0
    shadowing_db: float = 0.0

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Power gains ``[n, channels]``, float64, >= 0."""
        shape = (n, self.channels)
        p = self.params
        if self.model == "uniform":
            g = rng.uniform(p["low"], p["high"], size=shape)
        elif self.model == "rayleigh":
            g = rng.exponential(p["mean"], size=shape)
        elif self.model == "rician":
            k, mean = p["k_factor"], p["mean"]
            los = np.sqrt(mean * k / (k + 1.0))
            scatter = np.sqrt(mean / (2.0 * (k + 1.0)))
            re = los + scatter * rng.standard_normal(shape)
            im = scatter * rng.standard_normal(shape)
            g = re * re + im * im
        elif self.model == "nakagami":
            g = rng.gamma(p["m"], p["mean"] / p["m"], size=shape)
        else:  # guarded by Scenario.from_dict
            raise AssertionError(self.model)
        if self.attenuation_db:
            g *= 10.0 ** (-self.attenuation_db / 10.0)
        if self.shadowing_db:
            g *= 10.0 ** (rng.standard_normal(shape) * (self.shadowing_db / 10.0))
        return g

    def describe(self) -> str:
        args = ", ".join(f"{k}={v:g}" for k, v in self.params.items())
        extra = ""
        if self.attenuation_db:
            extra += f", -{self.attenuation_db:g} dB"
        if self.shadowing_db:
            extra += f", shadowing {self.shadowing_db:g} dB"
        return f"{self.channels} x {self.model}({args}){extra}"


@dataclass(frozen=True)
class Scenario:
    """How gain vectors are drawn, with M, P and sigma^2."""

    name: str
    groups: tuple[Group, ...]
    total_power: float = 0.2
    noise: float = 1.0
    description: str = ""

    @property
    def m(self) -> int:
        return sum(g.channels for g in self.groups)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Gain vectors ``[n, M]``, float64."""
        return np.concatenate([g.sample(n, rng) for g in self.groups], axis=1)

    def with_power(self, total_power: float) -> Scenario:
        return replace(self, total_power=float(total_power))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form; ``Scenario.from_dict`` reads it back."""
        groups = []
        for g in self.groups:
            d: dict[str, Any] = {"channels": g.channels, "model": g.model, **g.params}
            for key in OPTIONAL:
                if getattr(g, key):
                    d[key] = getattr(g, key)
            groups.append(d)
        return {
            "name": self.name,
            "description": self.description,
            "channels": self.m,
            "total_power": self.total_power,
            "noise": self.noise,
            "groups": groups,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "scenario") -> Scenario:
        """Build and validate a scenario; errors name ``source`` and the key."""

        def err(key: str, msg: str) -> UserError:
            return UserError(f"{source}: {key}: {msg}")

        known = {"name", "description", "channels", "total_power", "noise", "groups"}
        for key in data:
            if key not in known:
                raise err(key, f"unknown key (expected one of {', '.join(sorted(known))})")
        raw_groups = data.get("groups")
        if not isinstance(raw_groups, list) or not raw_groups:
            raise err("groups", "missing: a scenario needs at least one [[groups]] table")
        groups = [_group(g, f"groups[{i}]", err) for i, g in enumerate(raw_groups)]
        m = sum(g.channels for g in groups)
        if "channels" in data:
            declared = _number(data["channels"], "channels", err)
            if declared != m:
                raise err("channels", f"is {declared:g} but the groups add up to {m} channels")
        total_power = _number(data.get("total_power", 0.2), "total_power", err)
        noise = _number(data.get("noise", 1.0), "noise", err)
        for key, value in (("total_power", total_power), ("noise", noise)):
            if not value > 0:
                raise err(key, f"must be > 0, got {value:g}")
        name = data.get("name", Path(source).stem)
        if not isinstance(name, str) or not name:
            raise err("name", "must be a non-empty string")
        return cls(
            name=name,
            groups=tuple(groups),
            total_power=total_power,
            noise=noise,
            description=str(data.get("description", "")),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict())


def _number(value: Any, key: str, err: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise err(key, f"must be a number, got {value!r}")
    value = float(value)
    if not np.isfinite(value):
        raise err(key, f"must be finite, got {value!r}")
    return value


def _group(raw: Any, where: str, err: Any) -> Group:
    if not isinstance(raw, dict):
        raise err(where, "must be a table")
    model = raw.get("model")
    if model is None:
        raise err(f"{where}.model", f"missing (choose {', '.join(MODELS)})")
    if model not in MODELS:
        raise err(f"{where}.model", f"unknown model {model!r} (choose {', '.join(MODELS)})")
    allowed = {"channels", "model", *MODELS[model], *OPTIONAL}
    for key in raw:
        if key not in allowed:
            raise err(
                f"{where}.{key}",
                f"not a parameter of {model} (it takes {', '.join(MODELS[model] + OPTIONAL)})",
            )
    if "channels" not in raw:
        raise err(f"{where}.channels", "missing")
    channels = raw["channels"]
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise err(f"{where}.channels", f"must be an integer >= 1, got {channels!r}")
    params = {}
    for key in MODELS[model]:
        if key not in raw:
            raise err(f"{where}.{key}", f"missing ({model} needs {', '.join(MODELS[model])})")
        params[key] = _number(raw[key], f"{where}.{key}", err)
    if model == "uniform":
        if params["low"] < 0:
            raise err(f"{where}.low", f"must be >= 0 (a power gain), got {params['low']:g}")
        if params["high"] <= params["low"]:
            raise err(f"{where}.high", f"must be > low ({params['low']:g}), got {params['high']:g}")
    else:
        for key in MODELS[model]:
            if key == "k_factor":
                if params[key] < 0:
                    raise err(f"{where}.{key}", f"must be >= 0, got {params[key]:g}")
            elif key == "m":
                if params[key] < 0.5:
                    raise err(f"{where}.m", f"must be >= 0.5 (Nakagami), got {params[key]:g}")
            elif params[key] <= 0:
                raise err(f"{where}.{key}", f"must be > 0, got {params[key]:g}")
    extra = {k: _number(raw[k], f"{where}.{k}", err) for k in OPTIONAL if k in raw}
    if extra.get("shadowing_db", 0.0) < 0:
        raise err(f"{where}.shadowing_db", "must be >= 0")
    return Group(channels=channels, model=model, params=params, **extra)


def builtin() -> dict[str, Scenario]:
    """The paper's two phases (DESIGN.md section 1), P = 0.2, sigma^2 = 1."""
    return {
        "t1": Scenario(
            name="t1",
            description="T1, good weather: g1..g10 ~ U[5,8], g11..g20 ~ U[3,6]",
            groups=(
                Group(10, "uniform", {"low": 5.0, "high": 8.0}),
                Group(10, "uniform", {"low": 3.0, "high": 6.0}),
            ),
        ),
        "t2": Scenario(
            name="t2",
            description="T2, rainstorm: all 20 gains ~ U[1,7]",
            groups=(Group(20, "uniform", {"low": 1.0, "high": 7.0}),),
        ),
    }


def get(name_or_path: str | Path) -> Scenario:
    """A built-in scenario by name, or one read from a TOML file."""
    key = str(name_or_path)
    table = builtin()
    if key in table:
        return table[key]
    path = Path(key)
    if path.suffix.lower() != ".toml" and not path.exists():
        raise UserError(
            f"unknown scenario {key!r}: use a built-in ({', '.join(table)}) or a .toml file"
        )
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{key}: no such scenario file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{key}: cannot read ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{key}: not valid TOML ({exc})") from None
    return Scenario.from_dict(data, source=key)


def estimate(scenario: Scenario, samples: int = 20000, seed: int = 0) -> dict[str, float]:
    """Quick look at a scenario: mean gain, and the optimum's and equal split's mean sum rates."""
    from aigxctl import core

    g = np.concatenate(list(draw_chunks(scenario, samples, seed)))
    p, s2 = scenario.total_power, scenario.noise
    opt = float(core.sum_rate(g, core.waterfill(g, p, s2), s2).mean())
    equal = float(core.sum_rate(g, np.full_like(g, p / scenario.m), s2).mean())
    return {
        "mean_gain": float(g.mean()),
        "optimum_rate": opt,
        "equal_rate": equal,
        "optimum_gain_over_equal": opt / equal - 1.0,
    }


def draw_chunks(scenario: Scenario, samples: int, seed: int) -> Iterator[np.ndarray]:
    """Gain vectors in chunks of ``CHUNK_ROWS``; chunk i comes from its own generator seeded by
    (seed, i), so the draws depend on the seed alone, never on how they are consumed."""
    for i, start in enumerate(range(0, samples, CHUNK_ROWS)):
        n = min(CHUNK_ROWS, samples - start)
        yield scenario.sample(n, np.random.default_rng([seed, i]))
