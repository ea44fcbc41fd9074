"""Scenarios: how channel gains are drawn, plus the number of channels M, the power budget P and
the noise power sigma^2.

A scenario is a list of channel groups; each group draws the power gains |h|^2 of ``channels``
consecutive channels from one channel model, and may add a fixed attenuation and log-normal
shadowing on top:

* ``uniform``  (``low``, ``high``): g ~ U[low, high] (the paper's T1/T2 phases);
* ``rayleigh`` (``mean``): Rayleigh fading, g = |h|^2 ~ Exponential(mean);
* ``rician``   (``k_factor``, ``mean``): a line-of-sight path with K times the power of the
  scattered part, mean power ``mean`` (K = 0 is Rayleigh);
* ``nakagami`` (``m``, ``mean``): Nakagami-m fading, g ~ Gamma(shape m, scale mean / m), m >= 0.5;
* any group, optional: ``attenuation_db`` (path loss, rain fade) scales g by 10^(-dB/10), and
  ``shadowing_db`` (sigma in dB) multiplies it by 10^(N(0, sigma^2)/10), one draw per channel.

Scenario files are TOML (``aigxctl scenarios show t1 --toml`` prints one to start from)::

    name = "rainstorm"         # optional (default: the file name)
    description = "T1 channels under 3 dB of rain fade, with shadowing"
    channels = 20              # M, optional; when given it must match the groups' sum
    total_power = 0.2          # P in watts, optional (default 0.2)
    noise = 1.0                # sigma^2, optional (default 1)

    [[groups]]                 # channels 1..10
    channels = 10
    model = "rician"
    k_factor = 4.0
    mean = 6.5
    attenuation_db = 3.0

    [[groups]]                 # channels 11..20
    channels = 10
    model = "nakagami"
    m = 2.0
    mean = 4.5
    shadowing_db = 2.0

Every mistake is a UserError naming the file and the key, e.g.
``rain.toml: groups[1].model: unknown model 'foo' (choose uniform, rayleigh, rician, nakagami)``
(groups are numbered from 0, as the ``[[groups]]`` tables appear). Values are bounded, and
the message says the range: M <= MAX_CHANNELS, the gain scales, P and sigma^2 in SCALE_RANGE,
attenuation_db in ATTENUATION_DB_RANGE, shadowing_db in SHADOWING_DB_RANGE, k_factor and m in
K_FACTOR_RANGE and NAKAGAMI_M_RANGE; files over MAX_TOML_BYTES are not read.

Scenario families: a scenario may vary from sample to sample, two ways (they combine).

* Ranges: any group parameter (``low``, ``high``, ``mean``, ``k_factor``, ``m``,
  ``attenuation_db``, ``shadowing_db``) may be a ``[a, b]`` range instead of a number; each sample
  (row) draws it from U[a, b], one value for all the group's channels. A uniform group's ``high``
  range must lie above its ``low`` range (every draw has low < high); ``[a, a]`` is just a.
* Mixtures: ``[[mixture]]`` tables instead of ``[[groups]]``; each sample is drawn from one of
  them, chosen with probability weight / (sum of weights). A part is a built-in name or another
  scenario file (``scenario = "t1"``, a path relative to this file), or inline, with its own
  ``[[mixture.groups]]``. The parts must have the same M; they give the gains only: P and
  sigma^2 are the family's (a part read from a file must agree with them). Mixtures do not nest::

    name = "fair-or-foul"
    total_power = 0.2

    [[mixture]]
    scenario = "t1"            # good weather, half the samples
    weight = 1

    [[mixture]]                # storms of any strength, the other half
    name = "storm"
    weight = 1
    [[mixture.groups]]
    channels = 20
    model = "rician"
    k_factor = [0.0, 8.0]      # a new K for every sample
    mean = 5.0
    attenuation_db = [0.0, 6.0]

:func:`families` holds the built-in family ``weather`` (examples/weather-family.toml is the same, as
a file): T1, T2 and each channel model around them, with ranges (see :func:`families`).

Reproducible draws: :func:`draw_chunks` splits the N rows into blocks of ``CHUNK_ROWS`` and gives
every (block, group) its own generator, spawned from ``SeedSequence(seed)``. So the rows depend
on the seed alone: not on how many rows are asked for (N = 1000 gives the first 1000 rows of
N = 10^6) and not on the chunk size the caller consumes them in. Families keep this: a group's
ranged parameters have their own stream per block, a mixture draws each row's part from one more
stream, and each part's groups draw from streams of their own, consumed only by that part's
rows (so plain scenarios draw exactly what they drew before families existed).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from aigxctl.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "CHUNK_BYTES",
    "CHUNK_ROWS",
    "MAX_CHANNELS",
    "MAX_DRAW_BYTES",
    "MODELS",
    "Component",
    "Group",
    "Scenario",
    "builtin",
    "check_draw_size",
    "draw",
    "draw_chunks",
    "estimate",
    "families",
    "get",
    "read_toml",
]

# The parameters each model takes (all required).
MODELS: dict[str, tuple[str, ...]] = {
    "uniform": ("low", "high"),
    "rayleigh": ("mean",),
    "rician": ("k_factor", "mean"),
    "nakagami": ("m", "mean"),
}
OPTIONAL = ("attenuation_db", "shadowing_db")
TOP_KEYS = ("name", "description", "channels", "total_power", "noise", "groups", "mixture")
# The keys of a [[mixture]] part: a weight, and either a scenario (name or file) or inline groups.
MIXTURE_KEYS = ("weight", "scenario", "name", "description", "groups")
# The most parts a mixture may have, and the range of their weights (relative; default 1).
MAX_MIXTURE = 1024
WEIGHT_RANGE = (1e-9, 1e9)
# The most channel groups a mixture's parts have in all: a dataset's metadata holds them inline
# (data.MAX_META_CHARS), however many files they were read from.
MAX_MIXTURE_GROUPS = 1 << 14
# Rows per generator block. Part of the definition of a seed's draws: changing it changes every
# dataset, so it is a constant, not an option.
CHUNK_ROWS = 1 << 16
# Most bytes of gains one drawn part or yielded chunk holds. A block of CHUNK_ROWS rows is drawn
# in parts of at most this size (each stream goes on where the last part stopped, so the rows
# are the same), which keeps a chunk bounded whatever M is: at M = MAX_CHANNELS a whole block
# would be 32 GiB.
CHUNK_BYTES = 1 << 26
# The most channels M a scenario (or a dataset) may have.
MAX_CHANNELS = 1 << 16
# The most bytes of float64 gains drawn into one in-memory array (scenarios show, evaluate,
# bench); streamed collection has no such limit. Callers hold a few arrays of this size.
MAX_DRAW_BYTES = 1 << 31
# Scenario and cycle files are a few hundred bytes; this bounds what is read before parsing.
MAX_TOML_BYTES = 1 << 20
# Scenario and cycle files nest three tables deep at most.
MAX_TOML_DEPTH = 16
# Gain scales (mean, low, high), P and sigma^2: 600 dB wide, so any unit system fits, and far
# enough inside float64's range (1e-308 .. 1e308) that no product of them, the attenuation and
# the shadowing under- or overflows.
SCALE_RANGE = (1e-30, 1e30)
# Fixed attenuation in dB: -100 (a 100 dB antenna/amplifier gain) to 300 (beyond deep-space
# path loss).
ATTENUATION_DB_RANGE = (-100.0, 300.0)
# Log-normal shadowing sigma in dB; measured values are 2..12 dB.
SHADOWING_DB_RANGE = (0.0, 30.0)
# Rician K (60 dB: a pure line of sight) and Nakagami m (1e6: practically no fading).
K_FACTOR_RANGE = (0.0, 1e6)
NAKAGAMI_M_RANGE = (0.5, 1e6)
# The allowed range of each group parameter (low may be 0: U[0, high] is a valid law).
PARAM_RANGES: dict[str, tuple[float, float]] = {
    "low": (0.0, SCALE_RANGE[1]),
    "high": SCALE_RANGE,
    "mean": SCALE_RANGE,
    "k_factor": K_FACTOR_RANGE,
    "m": NAKAGAMI_M_RANGE,
    "attenuation_db": ATTENUATION_DB_RANGE,
    "shadowing_db": SHADOWING_DB_RANGE,
}


# A parameter's value: a number, or a (low, high) range drawn per sample (see the docstring).
Value = float | tuple[float, float]


def _fmt(v: Value) -> str:
    return f"{v[0]:g}..{v[1]:g}" if isinstance(v, tuple) else f"{v:g}"


@dataclass(frozen=True)
class Group:
    """``channels`` consecutive channels drawn from one model (see the module docstring). Any
    parameter may be a ``(low, high)`` range, drawn once per sample for the whole group."""

    channels: int
    model: str
    params: dict[str, Value] = field(default_factory=dict, hash=False)
    attenuation_db: Value = 0.0
    shadowing_db: Value = 0.0

    @property
    def ranged(self) -> tuple[str, ...]:
        """The parameters given as ranges, in the order their per-sample values are drawn."""
        values = {**self.params, **{k: getattr(self, k) for k in OPTIONAL}}
        return tuple(k for k, v in values.items() if isinstance(v, tuple))

    def _values(self, n: int, rng: np.random.Generator) -> dict[str, Any]:
        """Each parameter: its number, or for a range ``[n, 1]`` values drawn from ``rng``, one
        row of U[0, 1) draws per sample (so the stream is consumed row by row)."""
        values: dict[str, Any] = {**self.params, **{k: getattr(self, k) for k in OPTIONAL}}
        ranged = self.ranged
        if ranged:
            u = rng.random((n, len(ranged)))
            for i, key in enumerate(ranged):
                lo, hi = values[key]
                values[key] = lo + (hi - lo) * u[:, i : i + 1]
        return values

    def sample(
        self,
        n: int,
        rng: np.random.Generator,
        shadow_rng: np.random.Generator | None = None,
        param_rng: np.random.Generator | None = None,
    ) -> np.ndarray:
        """Power gains ``[n, channels]``, float64, >= 0. Shadowing draws from ``shadow_rng`` and
        ranged parameters from ``param_rng`` (both default ``rng``; ranges are drawn first).
        Each stream is consumed row by row, so with separate streams the first k rows of a draw
        of n rows are a draw of k rows."""
        shape = (n, self.channels)
        p = self._values(n, param_rng or rng) if self.ranged else self.params
        if self.model == "uniform":
            g = rng.uniform(p["low"], p["high"], size=shape)
        elif self.model == "rayleigh":
            g = rng.exponential(p["mean"], size=shape)
        elif self.model == "rician":
            k, mean = p["k_factor"], p["mean"]
            # h = LOS + CN(0, scatter^2): |LOS|^2 = K mean/(K+1), E|scatter|^2 = mean/(K+1).
            z = rng.standard_normal((n, self.channels, 2))  # re, im side by side: row order
            z *= _cell(np.sqrt(mean / (2.0 * (k + 1.0))))
            z[..., 0] += np.sqrt(mean * k / (k + 1.0))
            g = np.square(z, out=z).sum(axis=2)
        elif self.model == "nakagami":
            g = rng.gamma(p["m"], p["mean"] / p["m"], size=shape)
        else:  # guarded by Scenario.from_dict
            raise AssertionError(self.model)
        attenuation = p["attenuation_db"] if self.ranged else self.attenuation_db
        shadowing = p["shadowing_db"] if self.ranged else self.shadowing_db
        if isinstance(attenuation, np.ndarray) or attenuation:
            g *= 10.0 ** (-attenuation / 10.0)
        if isinstance(shadowing, np.ndarray) or shadowing:
            shadow = (shadow_rng or rng).standard_normal(shape)
            shadow *= shadowing * np.log(10.0) / 10.0
            g *= np.exp(shadow, out=shadow)
        return g

    def describe(self) -> str:
        """One line, e.g. ``10 x U[5, 8]`` or ``10 x rician(k_factor=4, mean=6.5), -3 dB``; a
        range reads ``a..b``: ``10 x U[1..5, 6..8], attenuation 0..6 dB``."""
        if self.model == "uniform":
            law = f"U[{_fmt(self.params['low'])}, {_fmt(self.params['high'])}]"
        else:
            law = f"{self.model}({', '.join(f'{k}={_fmt(v)}' for k, v in self.params.items())})"
        extra = ""
        if isinstance(self.attenuation_db, tuple):
            extra += f", attenuation {_fmt(self.attenuation_db)} dB"
        elif self.attenuation_db:
            extra += f", {-self.attenuation_db:+g} dB"
        if self.shadowing_db:
            extra += f", shadowing {_fmt(self.shadowing_db)} dB"
        return f"{self.channels} x {law}{extra}"

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"channels": self.channels, "model": self.model}
        d.update((k, list(v) if isinstance(v, tuple) else v) for k, v in self.params.items())
        for key in OPTIONAL:
            v = getattr(self, key)
            if v:
                d[key] = list(v) if isinstance(v, tuple) else v
        return d


def _cell(scale: Any) -> Any:
    """A per-sample ``[n, 1]`` array as ``[n, 1, 1]`` (to scale ``[n, channels, 2]``)."""
    return scale[..., None] if isinstance(scale, np.ndarray) else scale


@dataclass(frozen=True)
class Component:
    """One part of a mixture: draws from ``scenario`` (a plain scenario, ranges allowed) with
    relative probability ``weight``."""

    weight: float
    scenario: Scenario

    @property
    def channels(self) -> int:
        return self.scenario.m

    def describe(self) -> str:
        """One line, e.g. ``weight 1: t1 = 10 x U[5, 8] + 10 x U[3, 6]``."""
        groups = " + ".join(g.describe() for g in self.scenario.groups)
        return f"weight {self.weight:g}: {self.scenario.name} = {groups}"

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"weight": self.weight, "name": self.scenario.name}
        if self.scenario.description:
            d["description"] = self.scenario.description
        d["groups"] = [g.to_dict() for g in self.scenario.groups]
        return d


@dataclass(frozen=True)
class Scenario:
    """How gain vectors are drawn, with M, P and sigma^2.

    ``groups`` are the channel groups, or for a mixture its parts (:class:`Component`, each with
    its own groups; :attr:`mixture` names them so). Both kinds describe themselves in one line."""

    name: str
    groups: tuple[Group, ...] | tuple[Component, ...]
    total_power: float = 0.2
    noise: float = 1.0
    description: str = ""

    @property
    def mixture(self) -> tuple[Component, ...]:
        """The parts of a mixture, or () for a scenario with channel groups."""
        if self.groups and isinstance(self.groups[0], Component):
            return self.groups  # type: ignore[return-value]
        return ()

    @property
    def is_family(self) -> bool:
        """Whether the law changes from sample to sample (a mixture, or ranged parameters)."""
        return bool(self.mixture) or any(g.ranged for g in self.groups)  # type: ignore[union-attr]

    @property
    def m(self) -> int:
        """The number of channels M (the groups' channels added up; a mixture's parts agree)."""
        if self.mixture:
            return self.mixture[0].channels
        return sum(g.channels for g in self.groups)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Gain vectors ``[n, M]``, float64, >= 0, all drawn from ``rng``. (Datasets use
        :func:`draw_chunks`, whose rows depend on the seed alone.)"""
        check_draw_size(n, self.m)
        if self.mixture:
            which = _choose(self.mixture, rng.random(n))
            out = np.empty((n, self.m))
            for c, part in enumerate(self.mixture):
                rows = np.flatnonzero(which == c)
                if len(rows):
                    out[rows] = part.scenario.sample(len(rows), rng)
            return out
        return np.concatenate([g.sample(n, rng) for g in self.groups], axis=1)

    def with_power(self, total_power: float) -> Scenario:
        """The same scenario with another power budget P."""
        total_power = float(total_power)
        lo, hi = SCALE_RANGE
        if not lo <= total_power <= hi:
            raise UserError(
                f"total power must be a finite number > 0, in [{lo:g}, {hi:g}] W, "
                f"got {total_power!r}"
            )
        return replace(self, total_power=total_power)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form; ``Scenario.from_dict`` reads it back (a mixture's parts inline)."""
        key = "mixture" if self.mixture else "groups"
        return {
            "name": self.name,
            "description": self.description,
            "channels": self.m,
            "total_power": self.total_power,
            "noise": self.noise,
            key: [g.to_dict() for g in self.groups],
        }

    def to_toml(self) -> str:
        """The scenario as a TOML file that :func:`get` reads back to an equal scenario."""
        d = self.to_dict()
        parts = d.pop("mixture", None)
        groups = d.pop("groups", None)

        def table(header: str, items: dict[str, Any]) -> list[str]:
            return ["", header, *(f"{k} = {_toml_value(v)}" for k, v in items.items())]

        lines = [f"{k} = {_toml_value(v)}" for k, v in d.items()]
        for g in groups or ():
            lines += table("[[groups]]", g)
        for part in parts or ():
            part_groups = part.pop("groups")
            lines += table("[[mixture]]", part)
            for g in part_groups:
                lines += table("[[mixture.groups]]", g)
        return "\n".join(lines) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "scenario") -> Scenario:
        """Build and validate a scenario; errors name ``source`` and the key. A mixture's
        ``scenario = FILE`` is read relative to ``source``'s folder."""

        def err(key: str, msg: str) -> UserError:
            return UserError(f"{source}: {key}: {msg}")

        for key in data:
            if key not in TOP_KEYS:
                raise err(key, f"unknown key (expected one of {', '.join(TOP_KEYS)})")

        def power_and_noise() -> dict[str, float]:
            return {
                key: _in_range(data.get(key, default), key, SCALE_RANGE, err, positive=True)
                for key, default in (("total_power", 0.2), ("noise", 1.0))
            }

        groups: tuple[Any, ...]
        if "mixture" in data:  # the parts take the family's P and sigma^2: read them first
            if "groups" in data:
                raise err("groups", "give [[groups]] or [[mixture]] parts, not both")
            values = power_and_noise()
            groups = _mixture(data["mixture"], source, values, err)
            m, what = groups[0].channels, "its parts have"
        else:
            if "groups" not in data:
                raise err("groups", "missing: a scenario needs at least one [[groups]] table")
            groups = _groups(data["groups"], "groups", err)
            m, what = sum(g.channels for g in groups), "the groups add up to"
        if "channels" in data:
            declared = _number(data["channels"], "channels", err)
            if declared != m:
                raise err("channels", f"is {declared:g} but {what} {m} channels")
        if "mixture" not in data:
            values = power_and_noise()
        name = data.get("name", Path(source).stem)
        if not isinstance(name, str) or not name.strip():
            raise err("name", f"must be a non-empty string, got {name!r}")
        description = data.get("description", "")
        if not isinstance(description, str):
            raise err("description", f"must be a string, got {description!r}")
        return cls(name=name, groups=groups, description=description, **values)


def _groups(raw_groups: Any, where: str, err: Callable[[str, str], UserError]) -> tuple[Group, ...]:
    """The ``[[groups]]`` array at ``where`` (``groups`` or ``mixture[i].groups``)."""
    if not isinstance(raw_groups, list) or not raw_groups:
        tables = "[[groups]]" if where == "groups" else "[[mixture.groups]]"
        raise err(where, f"must be a non-empty array of {tables} tables")
    groups = tuple(_group(g, f"{where}[{i}]", err) for i, g in enumerate(raw_groups))
    m = sum(g.channels for g in groups)
    if m > MAX_CHANNELS:
        raise err(where, f"add up to {m:,} channels, more than the {MAX_CHANNELS:,} allowed")
    return groups


def _mixture(
    raw: Any, source: str, family: dict[str, float], err: Callable[[str, str], UserError]
) -> tuple[Component, ...]:
    """The ``[[mixture]]`` parts, each a plain scenario with the family's P and sigma^2."""
    if not isinstance(raw, list) or not raw:
        raise err("mixture", "must be a non-empty array of [[mixture]] tables")
    if len(raw) > MAX_MIXTURE:
        raise err("mixture", f"has {len(raw):,} parts, more than the {MAX_MIXTURE:,} allowed")
    parts: list[Component] = []
    for i, entry in enumerate(raw):
        where = f"mixture[{i}]"
        if not isinstance(entry, dict):
            raise err(where, "must be a table")
        for key in entry:
            if key not in MIXTURE_KEYS:
                raise err(
                    f"{where}.{key}", f"unknown key (expected one of {', '.join(MIXTURE_KEYS)})"
                )
        weight = _in_range(entry.get("weight", 1.0), f"{where}.weight", WEIGHT_RANGE, err, True)
        if ("scenario" in entry) == ("groups" in entry):
            raise err(where, "needs either scenario = NAME|FILE or [[mixture.groups]], not both")
        if "scenario" in entry:
            for key in ("name", "description"):
                if key in entry:
                    raise err(f"{where}.{key}", "comes from the scenario it names")
            part = _referenced(entry["scenario"], source, f"{where}.scenario", family, err)
        else:
            name = entry.get("name", where)
            if not isinstance(name, str) or not name.strip():
                raise err(f"{where}.name", f"must be a non-empty string, got {_short(name)}")
            description = entry.get("description", "")
            if not isinstance(description, str):
                raise err(f"{where}.description", f"must be a string, got {_short(description)}")
            groups = _groups(entry["groups"], f"{where}.groups", err)
            part = Scenario(name, groups, description=description, **family)
        if parts and part.m != parts[0].channels:
            raise err(where, f"has {part.m} channels, mixture[0] has {parts[0].channels}")
        parts.append(Component(weight, part))
        total = sum(len(c.scenario.groups) for c in parts)
        if total > MAX_MIXTURE_GROUPS:
            raise err(where, f"brings the parts to {total:,} channel groups in all, more than "
                      f"the {MAX_MIXTURE_GROUPS:,} allowed")  # fmt: skip
    return tuple(parts)


def _referenced(
    ref: Any, source: str, key: str, family: dict[str, float], err: Callable[[str, str], UserError]
) -> Scenario:
    """The scenario a mixture part names: built-in, or a file relative to ``source``'s folder."""
    if not isinstance(ref, str) or not ref.strip():
        raise err(key, f"must be a built-in name or a .toml file, got {_short(ref)}")
    known = {**builtin(), **families()}
    if ref not in known:
        ref = str(Path(source).parent / ref)
    try:
        part = get(ref)
    except UserError as exc:
        raise err(key, str(exc)) from None
    if part.mixture:
        raise err(key, f"{part.name!r} is itself a mixture (mixtures do not nest)")
    for what in ("total_power", "noise"):
        if getattr(part, what) != family[what]:
            raise err(
                key,
                f"{part.name!r} has {what} {getattr(part, what):g} but the family "
                f"{family[what]:g} (a mixture draws gains for one P and sigma^2)",
            )
    return part


def _toml_value(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return f"[{', '.join(_toml_value(x) for x in v)}]"
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # a JSON string is a TOML basic string
    if isinstance(v, bool):
        return "true" if v else "false"
    return repr(v)  # int, or a finite float (validated): repr is valid TOML


def _short(value: Any, limit: int = 40) -> str:
    """``repr(value)``, cut short: a message quotes the value, not a 1 MiB array."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _number(value: Any, key: str, err: Callable[[str, str], UserError]) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise err(key, f"must be a number, got {_short(value)}")
    try:
        value = float(value)
    except OverflowError:  # a TOML integer past float64's range
        raise err(key, f"must be finite, got {_short(value)}") from None
    if not np.isfinite(value):
        raise err(key, f"must be finite, got {value!r}")
    return value


def _in_range(
    value: Any,
    key: str,
    bounds: tuple[float, float],
    err: Callable[[str, str], UserError],
    positive: bool = False,
) -> float:
    """A finite number in ``bounds`` (inclusive); ``positive`` words a value <= 0 as such."""
    value = _number(value, key, err)
    lo, hi = bounds
    if not lo <= value <= hi:
        low = "> 0" if positive and value <= 0 else f">= {lo:g}"
        raise err(key, f"must be {low} and <= {hi:g}, got {value:g}")
    return value


def _group(raw: Any, where: str, err: Callable[[str, str], UserError]) -> Group:
    if not isinstance(raw, dict):
        raise err(where, "must be a table")
    choose = f"choose {', '.join(MODELS)}"
    if "model" not in raw:
        raise err(f"{where}.model", f"missing ({choose})")
    model = raw["model"]
    if model not in MODELS:
        raise err(f"{where}.model", f"unknown model {model!r} ({choose})")
    takes = MODELS[model] + OPTIONAL
    for key in raw:
        if key not in ("channels", "model", *takes):
            raise err(f"{where}.{key}", f"not a parameter of {model} (it takes {', '.join(takes)})")
    if "channels" not in raw:
        raise err(f"{where}.channels", "missing (how many channels this group draws)")
    channels = raw["channels"]
    if (
        isinstance(channels, bool)
        or not isinstance(channels, int)
        or not 1 <= channels <= MAX_CHANNELS
    ):
        raise err(
            f"{where}.channels",
            f"must be an integer >= 1 and <= {MAX_CHANNELS}, got {_short(channels)}",
        )
    params = {}
    for key in MODELS[model]:
        if key not in raw:
            raise err(f"{where}.{key}", f"missing ({model} needs {', '.join(MODELS[model])})")
        params[key] = _value(
            raw[key], f"{where}.{key}", PARAM_RANGES[key], err, positive=key in ("mean", "high")
        )
    if model == "uniform":
        low, high = params["low"], params["high"]
        if isinstance(low, tuple) or isinstance(high, tuple):
            if _ends(high)[0] <= _ends(low)[1]:
                raise err(
                    f"{where}.high",
                    f"must be > low for every sample: {_fmt(high)} is not above {_fmt(low)}",
                )
        elif high <= low:
            raise err(f"{where}.high", f"must be > low ({low:g}), got {high:g}")
    extra = {k: _value(raw[k], f"{where}.{k}", PARAM_RANGES[k], err) for k in OPTIONAL if k in raw}
    return Group(channels=channels, model=model, params=params, **extra)


def _ends(v: Value) -> tuple[float, float]:
    return v if isinstance(v, tuple) else (v, v)


def _value(
    value: Any,
    key: str,
    bounds: tuple[float, float],
    err: Callable[[str, str], UserError],
    positive: bool = False,
) -> Value:
    """A number in ``bounds``, or a ``[a, b]`` range of them (a <= b; ``[a, a]`` is a)."""
    if not isinstance(value, list):
        return _in_range(value, key, bounds, err, positive)
    if len(value) != 2:
        raise err(key, f"a range must be [low, high], two numbers, got {_short(value)}")
    lo, hi = (_in_range(v, f"{key}[{i}]", bounds, err, positive) for i, v in enumerate(value))
    if hi < lo:
        raise err(key, f"range [{lo:g}, {hi:g}] is reversed (write [low, high])")
    return lo if lo == hi else (lo, hi)


def builtin() -> dict[str, Scenario]:
    """The paper's two phases (docs/architecture.md, "The problem"), P = 0.2, sigma^2 = 1."""
    return {
        "t1": Scenario(
            name="t1",
            description="the paper's T1, good weather",
            groups=(
                Group(10, "uniform", {"low": 5.0, "high": 8.0}),
                Group(10, "uniform", {"low": 3.0, "high": 6.0}),
            ),
        ),
        "t2": Scenario(
            name="t2",
            description="the paper's T2, rainstorm",
            groups=(Group(20, "uniform", {"low": 1.0, "high": 7.0}),),
        ),
    }


def families() -> dict[str, Scenario]:
    """The built-in family ``weather`` (examples/weather-family.toml is the same family as a file):
    M = 20, P = 0.2, sigma^2 = 1, eight equally likely parts, T1 and T2 as they are and six
    around them with per-sample ranges: uniform groups between T1 and T2, Rayleigh, Rician,
    Nakagami-m, log-normal shadowing on uniform groups, and rain (Rician under rain fade beside
    shadowed Nakagami, as in examples/rainstorm.toml). The strong half of the channels is the
    first ten, as in T1; mean gains stay in 1..8 before fade and shadowing."""
    t1, t2 = builtin()["t1"], builtin()["t2"]

    def part(name: str, description: str, *groups: Group) -> Component:
        return Component(1.0, Scenario(name, groups, description=description))

    def two(model: str, strong: dict[str, Value], weak: dict[str, Value], **extra: Value) -> tuple:
        return Group(10, model, strong, **extra), Group(10, model, weak, **extra)

    parts = (
        Component(1.0, t1),
        Component(1.0, t2),
        part("uniform", "uniform ranges from T2 to T1",
             *two("uniform", {"low": (1.0, 5.0), "high": (6.0, 8.0)},
                  {"low": (1.0, 3.0), "high": (5.0, 7.0)})),
        part("rayleigh", "Rayleigh fading, no line of sight",
             Group(20, "rayleigh", {"mean": (2.0, 8.0)})),
        part("rician", "Rician fading, a line of sight of any strength",
             *two("rician", {"k_factor": (0.0, 10.0), "mean": (4.0, 8.0)},
                  {"k_factor": (0.0, 10.0), "mean": (2.0, 6.0)})),
        part("nakagami", "Nakagami-m fading, deep to mild",
             *two("nakagami", {"m": (0.5, 4.0), "mean": (4.0, 8.0)},
                  {"m": (0.5, 4.0), "mean": (2.0, 6.0)})),
        part("shadowing", "uniform ranges under log-normal shadowing",
             *two("uniform", {"low": (1.0, 5.0), "high": (6.0, 8.0)},
                  {"low": (1.0, 3.0), "high": (5.0, 7.0)}, shadowing_db=(0.0, 6.0))),
        part("rain", "Rician under rain fade beside shadowed Nakagami-m",
             Group(10, "rician", {"k_factor": (1.0, 8.0), "mean": (4.0, 8.0)},
                   attenuation_db=(0.0, 6.0)),
             Group(10, "nakagami", {"m": (1.0, 3.0), "mean": (2.0, 6.0)},
                   shadowing_db=(0.0, 4.0))),
    )  # fmt: skip
    return {
        "weather": Scenario(
            name="weather",
            description="one model for all weather: T1, T2 and the fading models around them",
            groups=parts,
        )
    }


def get(name_or_path: str | Path) -> Scenario:
    """A built-in scenario or family by name, or one read from a TOML file."""
    key = str(name_or_path)
    table = {**builtin(), **families()}
    if key in table:
        return table[key]
    path = Path(key)
    if path.suffix.lower() != ".toml" and not path.exists():
        raise UserError(
            f"unknown scenario {key!r}: use a built-in ({', '.join(table)}) or a .toml file"
        )
    return Scenario.from_dict(read_toml(path, "scenario"), source=key)


def read_toml(path: str | Path, what: str) -> dict[str, Any]:
    """Parse a small TOML file (a ``what``: "scenario", "cycle config"). Every problem reading
    it is a one-line UserError naming the file: missing, a directory, over MAX_TOML_BYTES, not
    UTF-8, not TOML, or nested deeper than MAX_TOML_DEPTH."""
    name = str(path)
    from aigxctl.files import reading

    # One byte past the limit tells "too big" without reading a huge (or endless) file.
    with reading(name, f"{what} .toml file", missing=f"no such {what} file"), open(path, "rb") as f:
        raw = f.read(MAX_TOML_BYTES + 1)
    if len(raw) > MAX_TOML_BYTES:
        raise UserError(
            f"{name}: too big for a {what} file (more than {MAX_TOML_BYTES // 1024} KiB)"
        )
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{name}: not a text TOML file (it is not UTF-8)") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{name}: not valid TOML ({exc})") from None
    except RecursionError:  # tomllib parses nested arrays and inline tables recursively
        raise UserError(f"{name}: not a {what} file (arrays or tables nested too deep)") from None
    # Nesting the parser survived can still break what reads the values; no file of ours
    # nests more than three deep. Walked with a stack, not recursion.
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if not isinstance(value, (dict, list)):
            continue
        if depth > MAX_TOML_DEPTH:
            raise UserError(
                f"{name}: not a {what} file (arrays or tables nested more than "
                f"{MAX_TOML_DEPTH} deep)"
            )
        children = value.values() if isinstance(value, dict) else value
        stack.extend((child, depth + 1) for child in children)
    return data


def check_draw_size(samples: int, m: int, option: str = "samples") -> None:
    """Refuse an in-memory draw of ``samples`` x ``m`` float64 gains over MAX_DRAW_BYTES;
    ``option`` names the count in the message (e.g. "--samples")."""
    most = MAX_DRAW_BYTES // (8 * max(m, 1))
    if samples > most:
        raise UserError(
            f"{option} must be <= {most:,} for M = {m} channels (the gains are held in memory, "
            f"at most {MAX_DRAW_BYTES >> 30} GiB of them), got {samples:,}"
        )


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UserError(f"seed must be an integer >= 0, got {seed!r}")
    return int(seed)


def _part_rows(m: int) -> int:
    """Rows of M float64 gains drawn at a time: CHUNK_ROWS, or fewer to stay in CHUNK_BYTES."""
    return max(1, min(CHUNK_ROWS, CHUNK_BYTES // (8 * m)))


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def _choose(parts: tuple[Component, ...], u: np.ndarray) -> np.ndarray:
    """The part each row draws from, given one U[0, 1) draw per row."""
    cum = np.cumsum([c.weight for c in parts])
    return np.searchsorted(cum[:-1] / cum[-1], u, side="right")


def _drawer(scenario: Scenario, seed: int, key: tuple[int, ...]) -> Callable[[int], np.ndarray]:
    """``draw(n)``: the next n rows of a plain scenario's groups, group j drawing from the
    streams key + (j, 0), its shadowing from key + (j, 1) and its ranged parameters from
    key + (j, 2). Each stream is consumed row by row (:meth:`Group.sample`), so successive
    calls join into the rows one call for all of them gives."""
    streams = [
        (g, _rng(seed, *key, j, 0), _rng(seed, *key, j, 1), _rng(seed, *key, j, 2))
        for j, g in enumerate(scenario.groups)
    ]
    m = scenario.m

    def draw(n: int) -> np.ndarray:
        if len(streams) == 1:
            g, main, shadow, params = streams[0]
            return g.sample(n, main, shadow, params)
        out = np.empty((n, m))
        col = 0
        for g, main, shadow, params in streams:
            out[:, col : col + g.channels] = g.sample(n, main, shadow, params)
            col += g.channels
        return out

    return draw


def _block(scenario: Scenario, seed: int, index: int, rows: int) -> Iterator[np.ndarray]:
    """Rows of block ``index`` in parts of :func:`_part_rows`, all from children of
    ``SeedSequence(seed)``: a plain scenario's group j from the streams (index, j, 0..2) (see
    :func:`_drawer`); a mixture picks each row's part c from the stream (index,) and part c
    draws its rows from the streams (index, c, j, 0..2), consumed by its rows alone. So the
    parts join into the rows one draw of the whole block gives."""
    step = _part_rows(scenario.m)
    if not scenario.mixture:
        draw = _drawer(scenario, seed, (index,))
        for start in range(0, rows, step):
            yield draw(min(step, rows - start))
        return
    choose = _rng(seed, index)
    draws = [_drawer(c.scenario, seed, (index, i)) for i, c in enumerate(scenario.mixture)]
    for start in range(0, rows, step):
        n = min(step, rows - start)
        which = _choose(scenario.mixture, choose.random(n))
        out = np.empty((n, scenario.m))
        for c, draw_part in enumerate(draws):
            picked = np.flatnonzero(which == c)
            if len(picked):
                out[picked] = draw_part(len(picked))
        yield out


def draw_chunks(
    scenario: Scenario, samples: int, seed: int, chunk: int = CHUNK_ROWS
) -> Iterator[np.ndarray]:
    """Gain vectors ``[<= chunk, M]`` (float64), ``samples`` rows in all, in order.

    The rows depend on ``seed`` alone (see the module docstring): the same whatever ``chunk``
    is, and the first k rows of a longer draw are the draw of k rows. A chunk holds at most
    CHUNK_BYTES of gains (fewer than ``chunk`` rows when M is large), and memory stays bounded
    by about two chunks.
    """
    seed = _check_seed(seed)
    if samples < 0:
        raise UserError(f"samples must be >= 0, got {samples}")
    if chunk < 1:
        raise UserError(f"chunk must be >= 1, got {chunk}")
    chunk = min(chunk, max(1, CHUNK_BYTES // (8 * scenario.m)))
    parts = (
        part
        for index, start in enumerate(range(0, samples, CHUNK_ROWS))
        for part in _block(scenario, seed, index, min(CHUNK_ROWS, samples - start))
    )
    pending: list[np.ndarray] = []
    have = 0
    for part in parts:
        pending.append(part)
        have += len(part)
        while have >= chunk:
            rows = pending[0] if len(pending) == 1 else np.concatenate(pending)
            yield rows[:chunk]
            pending = [rows[chunk:]] if have > chunk else []
            have -= chunk
    if have:
        yield pending[0] if len(pending) == 1 else np.concatenate(pending)


def draw(scenario: Scenario, samples: int, seed: int) -> np.ndarray:
    """All ``samples`` rows of :func:`draw_chunks` in one array ``[samples, M]``."""
    if samples < 0:
        raise UserError(f"samples must be >= 0, got {samples}")
    check_draw_size(samples, scenario.m)
    out = np.empty((samples, scenario.m))
    done = 0
    for rows in draw_chunks(scenario, samples, seed):
        out[done : done + len(rows)] = rows
        done += len(rows)
    return out


def estimate(scenario: Scenario, samples: int = 20000, seed: int = 0) -> dict[str, float]:
    """A quick look at what there is to win: the mean gain, and the mean sum rates of the
    water-filling optimum and of the equal split on ``samples`` draws."""
    from aigxctl import metrics

    if samples < 1:
        raise UserError(f"samples must be >= 1, got {samples}")
    g = draw(scenario, samples, seed)
    p, s2 = scenario.total_power, scenario.noise
    opt, equal = metrics.optimum_rate(g, p, s2), metrics.equal_rate(g, p, s2)
    if not equal > 0:
        raise UserError(
            f"{scenario.name}: the gains are too small for a nonzero sum rate at P = {p:g}, "
            f"sigma^2 = {s2:g} (mean gain {g.mean():.3g}): nothing to compare"
        )
    return {
        "mean_gain": float(g.mean()),
        "optimum_rate": opt,
        "equal_rate": equal,
        "optimum_gain_over_equal": opt / equal - 1.0,
    }
