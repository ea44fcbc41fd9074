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

Reproducible draws: :func:`draw_chunks` splits the N rows into blocks of ``CHUNK_ROWS`` and gives
every (block, group) its own generator, spawned from ``SeedSequence(seed)``. So the rows depend
on the seed alone: not on how many rows are asked for (N = 1000 gives the first 1000 rows of
N = 10^6) and not on the chunk size the caller consumes them in.
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
    "Group",
    "Scenario",
    "builtin",
    "check_draw_size",
    "draw",
    "draw_chunks",
    "estimate",
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
TOP_KEYS = ("name", "description", "channels", "total_power", "noise", "groups")
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


@dataclass(frozen=True)
class Group:
    """``channels`` consecutive channels drawn from one model (see the module docstring)."""

    channels: int
    model: str
    params: dict[str, float] = field(default_factory=dict, hash=False)
    attenuation_db: float = 0.0
    shadowing_db: float = 0.0

    def sample(
        self, n: int, rng: np.random.Generator, shadow_rng: np.random.Generator | None = None
    ) -> np.ndarray:
        """Power gains ``[n, channels]``, float64, >= 0. Shadowing draws from ``shadow_rng``
        (default ``rng``). Each stream is consumed row by row, so the first k rows of a draw of n
        rows are a draw of k rows."""
        shape = (n, self.channels)
        p = self.params
        if self.model == "uniform":
            g = rng.uniform(p["low"], p["high"], size=shape)
        elif self.model == "rayleigh":
            g = rng.exponential(p["mean"], size=shape)
        elif self.model == "rician":
            k, mean = p["k_factor"], p["mean"]
            # h = LOS + CN(0, scatter^2): |LOS|^2 = K mean/(K+1), E|scatter|^2 = mean/(K+1).
            z = rng.standard_normal((n, self.channels, 2))  # re, im side by side: row order
            z *= np.sqrt(mean / (2.0 * (k + 1.0)))
            z[..., 0] += np.sqrt(mean * k / (k + 1.0))
            g = np.square(z, out=z).sum(axis=2)
        elif self.model == "nakagami":
            g = rng.gamma(p["m"], p["mean"] / p["m"], size=shape)
        else:  # guarded by Scenario.from_dict
            raise AssertionError(self.model)
        if self.attenuation_db:
            g *= 10.0 ** (-self.attenuation_db / 10.0)
        if self.shadowing_db:
            shadow = (shadow_rng or rng).standard_normal(shape)
            shadow *= self.shadowing_db * np.log(10.0) / 10.0
            g *= np.exp(shadow, out=shadow)
        return g

    def describe(self) -> str:
        """One line, e.g. ``10 x U[5, 8]`` or ``10 x rician(k_factor=4, mean=6.5), -3 dB``."""
        if self.model == "uniform":
            law = f"U[{self.params['low']:g}, {self.params['high']:g}]"
        else:
            law = f"{self.model}({', '.join(f'{k}={v:g}' for k, v in self.params.items())})"
        extra = ""
        if self.attenuation_db:
            extra += f", {-self.attenuation_db:+g} dB"
        if self.shadowing_db:
            extra += f", shadowing {self.shadowing_db:g} dB"
        return f"{self.channels} x {law}{extra}"

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"channels": self.channels, "model": self.model, **self.params}
        for key in OPTIONAL:
            if getattr(self, key):
                d[key] = getattr(self, key)
        return d


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
        """The number of channels M (the groups' channels added up)."""
        return sum(g.channels for g in self.groups)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Gain vectors ``[n, M]``, float64, >= 0, all drawn from ``rng``. (Datasets use
        :func:`draw_chunks`, whose rows depend on the seed alone.)"""
        check_draw_size(n, self.m)
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
        """JSON-able form; ``Scenario.from_dict`` reads it back."""
        return {
            "name": self.name,
            "description": self.description,
            "channels": self.m,
            "total_power": self.total_power,
            "noise": self.noise,
            "groups": [g.to_dict() for g in self.groups],
        }

    def to_toml(self) -> str:
        """The scenario as a TOML file that :func:`get` reads back to an equal scenario."""
        d = self.to_dict()
        groups = d.pop("groups")
        lines = [f"{k} = {_toml_value(v)}" for k, v in d.items()]
        for g in groups:
            lines += ["", "[[groups]]", *(f"{k} = {_toml_value(v)}" for k, v in g.items())]
        return "\n".join(lines) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "scenario") -> Scenario:
        """Build and validate a scenario; errors name ``source`` and the key."""

        def err(key: str, msg: str) -> UserError:
            return UserError(f"{source}: {key}: {msg}")

        for key in data:
            if key not in TOP_KEYS:
                raise err(key, f"unknown key (expected one of {', '.join(TOP_KEYS)})")
        if "groups" not in data:
            raise err("groups", "missing: a scenario needs at least one [[groups]] table")
        raw_groups = data["groups"]
        if not isinstance(raw_groups, list) or not raw_groups:
            raise err("groups", "must be a non-empty array of [[groups]] tables")
        groups = tuple(_group(g, f"groups[{i}]", err) for i, g in enumerate(raw_groups))
        m = sum(g.channels for g in groups)
        if m > MAX_CHANNELS:
            raise err("groups", f"add up to {m:,} channels, more than the {MAX_CHANNELS:,} allowed")
        if "channels" in data:
            declared = _number(data["channels"], "channels", err)
            if declared != m:
                raise err("channels", f"is {declared:g} but the groups add up to {m} channels")
        values = {}
        for key, default in (("total_power", 0.2), ("noise", 1.0)):
            values[key] = _in_range(data.get(key, default), key, SCALE_RANGE, err, positive=True)
        name = data.get("name", Path(source).stem)
        if not isinstance(name, str) or not name.strip():
            raise err("name", f"must be a non-empty string, got {name!r}")
        description = data.get("description", "")
        if not isinstance(description, str):
            raise err("description", f"must be a string, got {description!r}")
        return cls(name=name, groups=groups, description=description, **values)


def _toml_value(v: Any) -> str:
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
        params[key] = _in_range(
            raw[key], f"{where}.{key}", PARAM_RANGES[key], err, positive=key in ("mean", "high")
        )
    if model == "uniform" and params["high"] <= params["low"]:
        raise err(f"{where}.high", f"must be > low ({params['low']:g}), got {params['high']:g}")
    extra = {
        k: _in_range(raw[k], f"{where}.{k}", PARAM_RANGES[k], err) for k in OPTIONAL if k in raw
    }
    return Group(channels=channels, model=model, params=params, **extra)


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


def _block(scenario: Scenario, seed: int, index: int, rows: int) -> Iterator[np.ndarray]:
    """Rows of block ``index`` in parts of :func:`_part_rows`: group j draws from the streams
    (index, j, 0), shadowing from (index, j, 1), all children of ``SeedSequence(seed)``. Each
    stream is consumed row by row (:meth:`Group.sample`), so the parts join into the rows one
    draw of the whole block gives."""

    def rng(*key: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))

    streams = [(g, rng(index, j, 0), rng(index, j, 1)) for j, g in enumerate(scenario.groups)]
    step = _part_rows(scenario.m)
    for start in range(0, rows, step):
        n = min(step, rows - start)
        if len(streams) == 1:
            g, main, shadow = streams[0]
            yield g.sample(n, main, shadow)
            continue
        out = np.empty((n, scenario.m))
        col = 0
        for g, main, shadow in streams:
            out[:, col : col + g.channels] = g.sample(n, main, shadow)
            col += g.channels
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
    return {
        "mean_gain": float(g.mean()),
        "optimum_rate": opt,
        "equal_rate": equal,
        "optimum_gain_over_equal": opt / equal - 1.0,
    }
