"""``tuner tune``: Bayesian search over vLLM flags on canary servers, under a latency SLO.

The pieces, in the order a search uses them:

* ``load_tune_config`` reads ``tune.yaml`` into a frozen ``TuneConfig`` (errors name the file,
  the key and what is allowed). The **space** has defaults for ``max-num-seqs``,
  ``gpu-memory-utilization`` and ``max-num-batched-tokens``; entries under ``space`` override
  them, add knobs (integer, real with optional log scale, categorical), map a knob to another
  flag (``flag: num-gpu-blocks-override``) or drop a default knob (``null``).
* ``apply_constraints`` repairs or rejects a candidate before launch
  (max-num-batched-tokens >= max-num-seqs; without chunked prefill >= max-model-len).
* ``plan_steps`` is the search as a pure state machine over the trials finished so far:
  baseline first, then optimizer trials (``skopt.Optimizer`` ask/tell), then repeats of the
  finalists, then the winner and the baseline re-measured interleaved. Because the plan is a
  function of the persisted trials, ``--resume`` simply reloads them, re-tells the optimizer
  and asks ``plan_steps`` again: nothing finished is repeated.
* ``run_trial`` starts a canary (``tuner.canary``), drives the load (``tuner.load``), scrapes
  the canary's ``/metrics`` into the search's store during the load window (``tuner.scrape``)
  and reads server-side signals from it, stops the canary, and scores the trial
  (``score_trial``): a normalized loss the optimizer minimizes, with SLO violations and failed
  trials penalized so the optimizer learns to avoid their neighbourhood.
* ``run_tune`` drives it all, persists each trial in ``OUT/tune.db`` (a ``tuner.store``
  document) when it ends, stops every canary on SIGTERM/SIGINT, and hands the outcome to
  ``tuner.report`` for ``trials.csv``, ``best.json``, ``report.md`` and the plots.

``skopt`` is imported only here. Its suggestions are numpy scalars; ``Knob.convert`` turns them
into plain Python values before they reach flags, JSON or SQLite.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
import re
import signal
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

import yaml

from tuner.config import _Reader
from tuner.errors import ConfigError, StoreError, TunerError
from tuner.load import LoadSummary

# ----------------------------------------------------------------------------- constants

#: vLLM serve flags a knob may map to (performance-relevant subset of ``vllm serve --help``).
KNOWN_FLAGS: frozenset[str] = frozenset(
    {
        "max-num-seqs",
        "gpu-memory-utilization",
        "max-num-batched-tokens",
        "enable-chunked-prefill",
        "block-size",
        "kv-cache-dtype",
        "max-model-len",
        "num-gpu-blocks-override",
        "kv-cache-memory-bytes",
        "cpu-offload-gb",
        "enable-prefix-caching",
        "prefix-caching-hash-algo",
        "tensor-parallel-size",
        "pipeline-parallel-size",
        "data-parallel-size",
        "enable-expert-parallel",
        "dtype",
        "quantization",
        "enforce-eager",
        "optimization-level",
        "compilation-config",
        "speculative-config",
        "scheduling-policy",
        "long-prefill-token-threshold",
        "async-scheduling",
        "max-cudagraph-capture-size",
        "cudagraph-capture-sizes",
        "disable-cascade-attn",
        "disable-custom-all-reduce",
        "kv-offloading-size",
        "kv-offloading-backend",
        "attention-backend",
        "stream-interval",
        "performance-mode",
        "max-num-scheduled-tokens",
        "max-num-active-seqs",
        "disable-hybrid-kv-cache-manager",
        "max-logprobs",
        "max-loras",
        "max-lora-rank",
        "swap-space",
        "api-server-count",
    }
)

KNOB_TYPES = ("integer", "real", "categorical")
OBJECTIVES = ("throughput", "cost", "goodput")
ESTIMATORS = ("GP", "RF", "ET")
ACQ_FUNCS = ("gp_hedge", "EI", "PI", "LCB")
BACKENDS = ("local", "kubernetes")

#: Trial kinds, in the order a search runs them.
KINDS = ("baseline", "search", "repeat", "confirm")
#: Trial states: ok = ran and met the SLO; slo = ran and missed it; failed = no usable
#: measurement (exit, oom, health_timeout, start_error, load_error, load_errors);
#: rejected = a constraint ruled the candidate out before launch.
STATES = ("ok", "slo", "failed", "rejected")

FAILED_LOSS = 1.0
SLO_LOSS_MAX = 0.5

TRIAL_DOC = "tune_trial"
META_DOC = "tune_meta"


class TuneError(TunerError):
    """A search could not run or continue (bad out dir, baseline that never starts, full disk)."""


class TuneInterrupted(TunerError):
    """SIGTERM or Ctrl-C: canaries stopped, finished trials persisted."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


# ----------------------------------------------------------------------------- the space


@dataclass(frozen=True)
class Knob:
    """One searched dimension: a name, the vLLM flag it sets, its type and range."""

    name: str
    flag: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    values: tuple[Any, ...] = ()

    def dimension(self) -> Any:
        from skopt.space import Categorical, Integer, Real

        prior = "log-uniform" if self.log else "uniform"
        if self.kind == "integer":
            assert self.low is not None and self.high is not None
            return Integer(int(self.low), int(self.high), prior=prior, name=self.name)
        if self.kind == "real":
            assert self.low is not None and self.high is not None
            return Real(float(self.low), float(self.high), prior=prior, name=self.name)
        return Categorical(list(self.values), name=self.name)

    def convert(self, value: Any) -> Any:
        """An optimizer value (numpy scalar) as a plain Python value of this knob's type."""
        if hasattr(value, "item") and callable(value.item):
            value = value.item()
        if self.kind == "integer":
            return round(float(value))
        if self.kind == "real":  # 4 significant digits: readable flags, same optimizer point
            return min(
                max(float(f"{float(value):.4g}"), float(self.low or 0)), float(self.high or 0)
            )
        for v in self.values:  # categorical: return the configured object itself
            if v == value and type(v) is type(value):
                return v
        for v in self.values:
            if v == value:
                return v
        return value

    def contains(self, value: Any) -> bool:
        if self.kind == "categorical":
            return any(v == value and type(v) is type(value) for v in self.values)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        assert self.low is not None and self.high is not None
        if self.kind == "integer" and float(value) != int(value):
            return False
        return self.low <= value <= self.high

    def describe(self) -> str:
        if self.kind == "categorical":
            return f"{self.name} in {list(self.values)}"
        scale = ", log" if self.log else ""
        return f"{self.name} {self.kind} [{_fmt(self.low)}, {_fmt(self.high)}{scale}]"


DEFAULT_KNOBS: tuple[Knob, ...] = (
    Knob("max-num-seqs", "max-num-seqs", "integer", 8, 256, log=True),
    Knob("gpu-memory-utilization", "gpu-memory-utilization", "real", 0.5, 0.95),
    Knob("max-num-batched-tokens", "max-num-batched-tokens", "integer", 256, 8192, log=True),
)


@dataclass(frozen=True)
class Space:
    knobs: tuple[Knob, ...]

    def dimensions(self) -> list[Any]:
        return [k.dimension() for k in self.knobs]

    def point(self, x: Sequence[Any]) -> dict[str, Any]:
        """An optimizer point (list, numpy scalars) -> ``{knob name: python value}``."""
        return {k.name: k.convert(v) for k, v in zip(self.knobs, x, strict=True)}

    def x(self, point: Mapping[str, Any]) -> list[Any]:
        return [point[k.name] for k in self.knobs]

    def flags(self, point: Mapping[str, Any]) -> dict[str, Any]:
        """``{knob name: value}`` -> ``{flag: value}``."""
        return {k.flag: point[k.name] for k in self.knobs if k.name in point}

    def point_from_flags(self, flags: Mapping[str, Any]) -> dict[str, Any] | None:
        """The point a flag set corresponds to, or None if a knob is unset or out of range."""
        out = {}
        for k in self.knobs:
            if k.flag not in flags or not k.contains(flags[k.flag]):
                return None
            out[k.name] = flags[k.flag]
        return out


def point_key(point: Mapping[str, Any]) -> str:
    """Canonical identity of a point (JSON with sorted keys)."""
    return json.dumps(dict(point), sort_keys=True, separators=(",", ":"))


# ----------------------------------------------------------------------------- constraints


@dataclass(frozen=True)
class Constraints:
    """Known vLLM constraints, checked on the full flag set before launch."""

    repair: bool = True
    max_model_len: int | None = None


def _chunked_prefill(flags: Mapping[str, Any]) -> bool:
    if flags.get("no-enable-chunked-prefill") is True:
        return False
    value = flags.get("enable-chunked-prefill")
    return value is None or value is True or str(value).lower() in ("true", "1", "yes")


def apply_constraints(
    flags: Mapping[str, Any], space: Space, constraints: Constraints
) -> tuple[dict[str, Any] | None, tuple[str, ...]]:
    """Repair or reject a full flag set. Returns (flags or None when rejected, notes).

    * ``max-num-batched-tokens >= max-num-seqs`` (the step's token budget must fit one token
      per running sequence): raised to max-num-seqs when repair is on and that stays inside
      the searched range, else rejected.
    * without chunked prefill, ``max-num-batched-tokens >= max-model-len`` (a whole prompt
      must fit in one step): raised likewise, else rejected.
    """
    out = dict(flags)
    notes: list[str] = []
    by_flag = {k.flag: k for k in space.knobs}
    mbt_knob = by_flag.get("max-num-batched-tokens")
    mbt = out.get("max-num-batched-tokens")

    def need(minimum: int, why: str) -> bool:
        nonlocal mbt
        if mbt is None or mbt >= minimum:
            return True
        high = mbt_knob.high if mbt_knob is not None else None
        if constraints.repair and high is not None and minimum <= high:
            notes.append(f"repaired max-num-batched-tokens {mbt} -> {minimum} ({why})")
            mbt = minimum
            out["max-num-batched-tokens"] = minimum
            return True
        notes.append(f"rejected: max-num-batched-tokens {mbt} < {minimum} ({why})")
        return False

    seqs = out.get("max-num-seqs")
    if isinstance(seqs, int) and not need(seqs, "must be >= max-num-seqs"):
        return None, tuple(notes)
    if not _chunked_prefill(out):
        mml = out.get("max-model-len", constraints.max_model_len)
        if isinstance(mml, int) and not need(
            mml, "without chunked prefill it must be >= max-model-len"
        ):
            return None, tuple(notes)
    return out, tuple(notes)


# ----------------------------------------------------------------------------- the config


@dataclass(frozen=True)
class Launch:
    command: tuple[str, ...]
    model: str
    flags: Mapping[str, Any]
    env: Mapping[str, str]
    host: str = "127.0.0.1"
    served_model_name: str | None = None


@dataclass(frozen=True)
class Objective:
    """What the search optimizes: ``throughput`` (output tok/s, max), ``cost`` ($/Mtok, min)
    or ``goodput`` (output tok/s of requests that met the per-request SLO, max)."""

    kind: str = "throughput"
    dollars_per_hour: float | None = None

    @property
    def higher_is_better(self) -> bool:
        return self.kind != "cost"

    @property
    def unit(self) -> str:
        return "$/Mtok" if self.kind == "cost" else "tok/s"


@dataclass(frozen=True)
class TuneSLO:
    ttft_p99_seconds: float | None = None
    itl_p99_seconds: float | None = None
    e2e_p99_seconds: float | None = None
    error_rate: float | None = None


@dataclass(frozen=True)
class Budget:
    trials: int = 12
    wall_time: float | None = None


@dataclass(frozen=True)
class Noise:
    finalists: int = 2
    repeats: int = 1
    confirm_rounds: int = 1
    min_gain: float = 0.05
    single_run_noise: float = 0.2


@dataclass(frozen=True)
class OptimizerConfig:
    estimator: str = "GP"
    initial_points: int = 4
    seed: int = 0
    acq_func: str = "gp_hedge"


@dataclass(frozen=True)
class CanaryConfig:
    backend: str = "local"
    health_timeout: float = 300.0
    scrape_interval: float = 1.0
    omp_binds: tuple[str, ...] = ()
    pod_template: Mapping[str, Any] | None = None
    namespace: str = "default"


@dataclass(frozen=True)
class TuneConfig:
    source: Path | None
    launch: Launch
    baseline_flags: Mapping[str, Any]
    space: Space
    constraints: Constraints
    objective: Objective
    slo: TuneSLO
    load: Mapping[str, Any]
    max_error_rate: float
    budget: Budget
    noise: Noise
    optimizer: OptimizerConfig
    canary: CanaryConfig
    out: Path
    container_name: str = "vllm"

    def fingerprint(self) -> str:
        """Identity of what makes trials comparable: launch, space, objective, SLO, load."""
        body = {
            "launch": {"model": self.launch.model, "flags": dict(self.launch.flags)},
            "baseline": dict(self.baseline_flags),
            "space": [asdict(k) for k in self.space.knobs],
            "objective": asdict(self.objective),
            "slo": asdict(self.slo),
            "load": dict(self.load),
        }
        text = json.dumps(body, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


_TOP_KEYS = {
    k: ""
    for k in (
        "launch",
        "baseline",
        "space",
        "constraints",
        "objective",
        "slo",
        "load",
        "budget",
        "noise",
        "optimizer",
        "canary",
        "out",
        "report",
    )
}
_LAUNCH_KEYS = {k: "" for k in ("command", "model", "flags", "env", "host", "served_model_name")}
_KNOB_KEYS = {k: "" for k in ("flag", "type", "low", "high", "log", "values")}
_CONSTRAINT_KEYS = {"repair": "", "max_model_len": ""}
_OBJECTIVE_KEYS = {"kind": "", "dollars_per_hour": ""}
_SLO_KEYS = {
    k: "" for k in ("ttft_p99_seconds", "itl_p99_seconds", "e2e_p99_seconds", "error_rate")
}
_BUDGET_KEYS = {"trials": "", "wall_time": ""}
_NOISE_KEYS = {f: "" for f in Noise.__dataclass_fields__}
_OPT_KEYS = {f: "" for f in OptimizerConfig.__dataclass_fields__}
_CANARY_KEYS = {
    k: ""
    for k in (
        "backend",
        "health_timeout",
        "scrape_interval",
        "omp_binds",
        "pod_template",
        "namespace",
    )
}
_REPORT_KEYS = {"container_name": ""}
#: Load keys handled here; the rest go to ``tuner.load.LoadSpec``.
_LOAD_OWN_KEYS = ("max_error_rate", "workload")
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand(r: _Reader, value: Any, key: str) -> str:
    text = r.string(value, key) if not isinstance(value, int | float) else str(value)

    def sub(m: re.Match[str]) -> str:
        env = os.environ.get(m.group(1))
        if env is not None and env != "":
            return env
        if m.group(2) is not None:
            return m.group(2)
        raise r.fail(
            key, f"environment variable {m.group(1)} is not set (used as ${{{m.group(1)}}})"
        )

    return _ENV_RE.sub(sub, text)


def _flag_key(r: _Reader, name: Any, key: str) -> str:
    flag = r.string(name, key).lstrip("-")
    return flag


def _check_known_flag(r: _Reader, flag: str, key: str) -> None:
    if flag in KNOWN_FLAGS:
        return
    close = difflib.get_close_matches(flag, sorted(KNOWN_FLAGS), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise r.fail(
        key,
        f"unknown vLLM flag {flag!r}{hint}; a knob maps to one of: "
        f"{', '.join(sorted(KNOWN_FLAGS))}",
    )


def _number(r: _Reader, value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise r.fail(key, f"{value!r} is not a number")
    return value


def _parse_knob(r: _Reader, name: str, raw: Any, default: Knob | None) -> Knob:
    key = f"space.{name}"
    m = r.mapping(raw, key, _KNOB_KEYS)
    flag = (
        _flag_key(r, m["flag"], f"{key}.flag")
        if "flag" in m
        else (default.flag if default else name)
    )
    _check_known_flag(r, flag, f"{key}.flag" if "flag" in m else key)
    kind = m.get("type")
    values: tuple[Any, ...] = ()
    if "values" in m:
        if not isinstance(m["values"], list):
            raise r.fail(f"{key}.values", "must be a list of the values to try")
        values = tuple(m["values"])
        if kind not in (None, "categorical"):
            raise r.fail(f"{key}.type", f"{kind!r} with values: use type categorical or low/high")
        kind = "categorical"
        if len(set(map(json.dumps, values))) < 2:
            raise r.fail(
                f"{key}.values",
                f"empty range: {list(values)} has fewer than 2 "
                "distinct values (fix the flag under launch.flags instead)",
            )
        for v in values:
            if not isinstance(v, str | int | float | bool):
                raise r.fail(f"{key}.values", f"{v!r}: values must be strings, numbers or booleans")
        return Knob(name, flag, "categorical", values=values)
    if kind is not None and kind not in KNOB_TYPES:
        raise r.fail(f"{key}.type", f"{kind!r} is not allowed; use one of {', '.join(KNOB_TYPES)}")
    if kind == "categorical":
        raise r.fail(f"{key}.values", "a categorical knob needs values: [...]")
    low = m.get("low", default.low if default else None)
    high = m.get("high", default.high if default else None)
    if low is None or high is None:
        raise r.fail(key, "needs low and high (or values: [...] for a categorical knob)")
    low = _number(r, low, f"{key}.low")
    high = _number(r, high, f"{key}.high")
    if kind is None:
        if default is not None and "low" not in m and "high" not in m:
            kind = default.kind
        else:
            kind = "integer" if isinstance(low, int) and isinstance(high, int) else "real"
    if kind == "integer" and (float(low) != int(low) or float(high) != int(high)):
        raise r.fail(key, f"integer knob needs whole-number bounds, got low={low} high={high}")
    if low > high:
        raise r.fail(key, f"min > max: low={_fmt(low)} is above high={_fmt(high)}")
    if low == high:
        raise r.fail(
            key,
            f"empty range: low == high == {_fmt(low)} (fix the flag under "
            "launch.flags instead of searching it)",
        )
    log = m.get("log", default.log if default and "low" not in m else False)
    if not isinstance(log, bool):
        raise r.fail(f"{key}.log", f"{log!r} is not true or false")
    if log and low <= 0:
        raise r.fail(f"{key}.log", f"log scale needs low > 0, got low={_fmt(low)}")
    return Knob(name, flag, kind, low, high, log)


def _parse_space(r: _Reader, raw: Any) -> Space:
    if raw is not None and not isinstance(raw, Mapping):
        raise r.fail("space", "must map knob names to {low, high[, log, type, flag]} or {values}")
    entries = dict(raw or {})
    knobs: list[Knob] = []
    defaults = {k.name: k for k in DEFAULT_KNOBS}
    for name, default in defaults.items():
        if name in entries:
            spec = entries.pop(name)
            if spec is None:
                continue
            knobs.append(_parse_knob(r, name, spec, default))
        else:
            knobs.append(default)
    for name, spec in entries.items():
        if not isinstance(name, str) or not name:
            raise r.fail("space", f"knob name {name!r} must be a non-empty string")
        if spec is None:
            raise r.fail(
                f"space.{name}",
                f"null only removes one of the default knobs ({', '.join(defaults)})",
            )
        knobs.append(_parse_knob(r, name, spec, None))
    if not knobs:
        raise r.fail("space", "no knobs left to search")
    flags = [k.flag for k in knobs]
    for f in set(flags):
        if flags.count(f) > 1:
            names = [k.name for k in knobs if k.flag == f]
            raise r.fail("space", f"knobs {names} all set flag {f!r}; a flag may be searched once")
    return Space(tuple(knobs))


def _flags_map(r: _Reader, raw: Any, key: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise r.fail(key, "must map vLLM flags (without --) to values")
    out: dict[str, Any] = {}
    for k, v in raw.items():
        name = _flag_key(r, k, f"{key}.{k}")
        if isinstance(v, str):
            v = _expand(r, v, f"{key}.{k}")
        out[name] = v
    return out


def parse_tune_config(data: Any, source: str = "<tune config>") -> TuneConfig:
    """Validate a parsed tune.yaml and build a TuneConfig; raises ConfigError."""
    r = _Reader(source)
    top = r.mapping(data, "", _TOP_KEYS)
    base_dir = Path(source).parent if not source.startswith("<") else Path(".")

    if "launch" not in top:
        raise r.fail("launch", "is required (command, model, flags, env)")
    lm = r.mapping(top["launch"], "launch", _LAUNCH_KEYS)
    if "model" not in lm:
        raise r.fail("launch.model", "is required (a model path or name)")
    cmd_raw = lm.get("command")
    if cmd_raw is None:
        from tuner.canary import DEFAULT_COMMAND

        command: tuple[str, ...] = DEFAULT_COMMAND
    elif isinstance(cmd_raw, str):
        import shlex

        command = tuple(shlex.split(_expand(r, cmd_raw, "launch.command")))
    elif isinstance(cmd_raw, list) and cmd_raw:
        command = tuple(_expand(r, c, f"launch.command[{i}]") for i, c in enumerate(cmd_raw))
    else:
        raise r.fail("launch.command", "must be a command line string or a non-empty list")
    if not command:
        raise r.fail("launch.command", "is empty")
    env_raw = lm.get("env") or {}
    if not isinstance(env_raw, Mapping):
        raise r.fail("launch.env", "must map variable names to values")
    env = {str(k): _expand(r, v, f"launch.env.{k}") for k, v in env_raw.items()}
    flags = _flags_map(r, lm.get("flags"), "launch.flags")
    for reserved in ("model", "port", "host", "served-model-name"):
        if reserved in flags:
            raise r.fail(
                f"launch.flags.{reserved}",
                "is set by the tuner; use launch.model / launch.host / launch.served_model_name",
            )
    launch = Launch(
        command=command,
        model=_expand(r, lm["model"], "launch.model"),
        flags=flags,
        env=env,
        host=r.string(lm.get("host", "127.0.0.1"), "launch.host"),
        served_model_name=(
            r.string(lm["served_model_name"], "launch.served_model_name")
            if lm.get("served_model_name") is not None
            else None
        ),
    )
    baseline_flags = {**flags, **_flags_map(r, top.get("baseline"), "baseline")}

    space = _parse_space(r, top.get("space"))

    cm = r.mapping(top.get("constraints"), "constraints", _CONSTRAINT_KEYS)
    repair = cm.get("repair", True)
    if not isinstance(repair, bool):
        raise r.fail("constraints.repair", f"{repair!r} is not true or false")
    mml = cm.get("max_model_len", flags.get("max-model-len"))
    if mml is not None and (isinstance(mml, bool) or not isinstance(mml, int) or mml <= 0):
        raise r.fail("constraints.max_model_len", f"{mml!r} is not a positive integer")
    constraints = Constraints(repair=repair, max_model_len=mml)

    om = r.mapping(top.get("objective"), "objective", _OBJECTIVE_KEYS)
    kind = om.get("kind", "throughput")
    if kind not in OBJECTIVES:
        raise r.fail(
            "objective.kind", f"{kind!r} is not allowed; use one of {', '.join(OBJECTIVES)}"
        )
    dph = om.get("dollars_per_hour")
    dollars = r.positive(dph, "objective.dollars_per_hour") if dph is not None else None
    if kind == "cost" and dollars is None:
        raise r.fail("objective.dollars_per_hour", "is required for objective kind cost ($/Mtok)")
    objective = Objective(kind, dollars)

    sm = r.mapping(top.get("slo"), "slo", _SLO_KEYS)
    slo_vals = {k: r.positive(v, f"slo.{k}") for k, v in sm.items() if v is not None}
    if slo_vals.get("error_rate", 0) >= 1:
        raise r.fail("slo.error_rate", "must be a fraction between 0 and 1")
    slo = TuneSLO(**slo_vals)
    if kind == "goodput" and slo.ttft_p99_seconds is None and slo.itl_p99_seconds is None:
        raise r.fail("slo", "objective goodput needs slo.ttft_p99_seconds or slo.itl_p99_seconds")

    load_raw = top.get("load")
    if not isinstance(load_raw, Mapping):
        raise r.fail(
            "load",
            "is required: a load shape (prompt_tokens, output_tokens, "
            "concurrency or request_rate, duration) or {workload: fingerprint.json}",
        )
    load = dict(load_raw)
    max_err = load.get("max_error_rate", 0.2)
    if isinstance(max_err, bool) or not isinstance(max_err, int | float) or not 0 <= max_err < 1:
        raise r.fail("load.max_error_rate", f"{max_err!r} is not a fraction in [0, 1)")
    if "workload" in load:
        wl = Path(_expand(r, load["workload"], "load.workload"))
        load["workload"] = str(wl if wl.is_absolute() else base_dir / wl)
    load.pop("max_error_rate", None)
    _validate_load(r, load)

    bm = r.mapping(top.get("budget"), "budget", _BUDGET_KEYS)
    trials = bm.get("trials", 12)
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise r.fail("budget.trials", f"{trials!r} is not a positive integer")
    wall = r.duration(bm["wall_time"], "budget.wall_time") if "wall_time" in bm else None
    budget = Budget(trials, wall)

    nm = r.mapping(top.get("noise"), "noise", _NOISE_KEYS)
    for k in ("finalists", "repeats", "confirm_rounds"):
        v = nm.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise r.fail(f"noise.{k}", f"{v!r} is not a non-negative integer")
    for k in ("min_gain", "single_run_noise"):
        if k in nm:
            r.positive(nm[k], f"noise.{k}")
    noise = Noise(**nm)

    opm = r.mapping(top.get("optimizer"), "optimizer", _OPT_KEYS)
    est = opm.get("estimator", "GP")
    if est not in ESTIMATORS:
        raise r.fail(
            "optimizer.estimator",
            f"{est!r} is not allowed; use one of "
            f"{', '.join(ESTIMATORS)} (GBRT is broken with scikit-learn >= 1.6)",
        )
    acq = opm.get("acq_func", "gp_hedge")
    if acq not in ACQ_FUNCS:
        raise r.fail(
            "optimizer.acq_func", f"{acq!r} is not allowed; use one of {', '.join(ACQ_FUNCS)}"
        )
    init = opm.get("initial_points", 4)
    seed = opm.get("seed", 0)
    for k, v in (("initial_points", init), ("seed", seed)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise r.fail(f"optimizer.{k}", f"{v!r} is not a non-negative integer")
    optimizer = OptimizerConfig(est, max(1, init), seed, acq)

    cn = r.mapping(top.get("canary"), "canary", _CANARY_KEYS)
    backend = cn.get("backend", "local")
    if backend not in BACKENDS:
        raise r.fail(
            "canary.backend", f"{backend!r} is not allowed; use one of {', '.join(BACKENDS)}"
        )
    binds = cn.get("omp_binds", [])
    if not isinstance(binds, list):
        raise r.fail(
            "canary.omp_binds",
            "must be a list of VLLM_CPU_OMP_THREADS_BIND values, "
            "one per parallel canary (e.g. ['0', '1'])",
        )
    template = None
    if backend == "kubernetes":
        if "pod_template" not in cn:
            raise r.fail(
                "canary.pod_template",
                "is required for the kubernetes backend (a Deployment or Pod manifest file)",
            )
        tpath = Path(_expand(r, cn["pod_template"], "canary.pod_template"))
        tpath = tpath if tpath.is_absolute() else base_dir / tpath
        try:
            template = yaml.safe_load(tpath.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise r.fail("canary.pod_template", f"cannot read {tpath}: {exc}") from None
        if not isinstance(template, Mapping):
            raise r.fail("canary.pod_template", f"{tpath} is not a manifest mapping")
    canary = CanaryConfig(
        backend=backend,
        health_timeout=r.duration(cn.get("health_timeout", "300s"), "canary.health_timeout"),
        scrape_interval=r.duration(cn.get("scrape_interval", "1s"), "canary.scrape_interval"),
        omp_binds=tuple(str(b) for b in binds),
        pod_template=template,
        namespace=r.string(cn.get("namespace", "default"), "canary.namespace"),
    )
    if canary.health_timeout <= 0 or canary.scrape_interval <= 0:
        raise r.fail("canary", "health_timeout and scrape_interval must be greater than 0s")

    out = Path(_expand(r, top.get("out", "tune-out"), "out"))
    if not out.is_absolute():
        out = base_dir / out
    rm = r.mapping(top.get("report"), "report", _REPORT_KEYS)

    return TuneConfig(
        source=Path(source) if not source.startswith("<") else None,
        launch=launch,
        baseline_flags=baseline_flags,
        space=space,
        constraints=constraints,
        objective=objective,
        slo=slo,
        load=load,
        max_error_rate=float(max_err),
        budget=budget,
        noise=noise,
        optimizer=optimizer,
        canary=canary,
        out=out,
        container_name=r.string(rm.get("container_name", "vllm"), "report.container_name"),
    )


def _validate_load(r: _Reader, load: Mapping[str, Any]) -> None:
    """Check the load section against ``tuner.load.LoadSpec`` without running anything."""
    build_load_spec(load, r)


def build_load_spec(load: Mapping[str, Any], r: _Reader | None = None) -> Any:
    """The ``tuner.load.LoadSpec`` for a config's load section (or a workload fingerprint)."""
    from tuner import load as load_mod

    r = r or _Reader("<tune config>")
    if "workload" in load:
        path = Path(str(load["workload"]))
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise r.fail(
                "load.workload", f"cannot read workload fingerprint {path}: {exc}"
            ) from None
        overrides = _load_kwargs(r, {k: v for k, v in load.items() if k != "workload"})
        try:
            return load_mod.load_spec_from_workload(data, **overrides)
        except (TunerError, ValueError, TypeError) as exc:
            raise r.fail("load.workload", f"{path}: {exc}") from None
    try:
        return load_mod.LoadSpec(**_load_kwargs(r, load))
    except (TunerError, ValueError, TypeError) as exc:
        raise r.fail("load", str(exc)) from None


def _load_kwargs(r: _Reader, load: Mapping[str, Any]) -> dict[str, Any]:
    from tuner import load as load_mod

    known = load_mod.LoadSpec.__dataclass_fields__
    out: dict[str, Any] = {}
    for k, v in load.items():
        if k not in known:
            allowed = sorted([*known, *_LOAD_OWN_KEYS])
            raise r.fail(f"load.{k}", f"unknown key; allowed keys here: {', '.join(allowed)}")
        if k in ("prompt_tokens", "output_tokens"):
            out[k] = _length_dist(r, v, f"load.{k}")
        elif k == "duration" and isinstance(v, str):
            out[k] = r.duration(v, f"load.{k}")
        elif k == "token_id_range" and isinstance(v, list):
            out[k] = tuple(v)
        else:
            out[k] = v
    return out


def _length_dist(r: _Reader, value: Any, key: str) -> Any:
    from tuner import load as load_mod

    if isinstance(value, int | float) and not isinstance(value, bool):
        value = {"kind": "fixed", "mean": value}
    if not isinstance(value, Mapping):
        raise r.fail(
            key,
            f"{value!r}: give a token count or a distribution mapping "
            f"(kind: {', '.join(load_mod.LENGTH_KINDS)}; mean, std, low, high, ...)",
        )
    allowed = load_mod.LengthDist.__dataclass_fields__
    kwargs: dict[str, Any] = {}
    for k, v in value.items():
        if k not in allowed:
            raise r.fail(f"{key}.{k}", f"unknown key; allowed keys here: {', '.join(allowed)}")
        kwargs[k] = tuple(v) if isinstance(v, list) else v
    try:
        return load_mod.LengthDist(**kwargs)
    except (TunerError, ValueError, TypeError) as exc:
        raise r.fail(key, str(exc)) from None


def load_tune_config(path: str | Path) -> TuneConfig:
    """Read and validate tune.yaml; raises ConfigError naming the file."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read tune config: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None
    return parse_tune_config(data, str(p))


# ----------------------------------------------------------------------------- measurements


@dataclass(frozen=True)
class Measurement(LoadSummary):
    """What one load run measured: client side (the load summary's fields) and server side
    (scraped signals)."""

    goodput_tok_per_s: float = math.nan
    preemptions: float = math.nan
    preemptions_per_1k_requests: float = math.nan
    kv_usage_max: float = math.nan
    kv_usage_mean: float = math.nan
    spec_decode_acceptance: float = math.nan
    server_generation_tokens: float = math.nan

    def to_json(self) -> dict[str, Any]:
        return {k: _json_num(v) for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Measurement:
        known = cls.__dataclass_fields__
        kwargs: dict[str, Any] = {
            k: (math.nan if v is None else v) for k, v in body.items() if k in known
        }
        return cls(**kwargs)


@dataclass(frozen=True)
class Trial:
    """One finished trial, as persisted."""

    number: int
    kind: str
    point: Mapping[str, Any]
    flags: Mapping[str, Any]
    state: str
    loss: float
    objective: float | None = None
    reason: str = ""
    log_tail: str = ""
    notes: tuple[str, ...] = ()
    measurement: Measurement | None = None
    started: float = 0.0
    ended: float = 0.0
    timings: Mapping[str, float] = field(default_factory=dict)
    violations: Mapping[str, float] = field(default_factory=dict)

    @property
    def subject(self) -> str:
        """Whom the trial measures: ``baseline`` or the point's key."""
        return (
            "baseline"
            if self.kind == "baseline" or self.point.get("__subject__") == ("baseline")
            else point_key(self.point)
        )

    @property
    def search_point(self) -> dict[str, Any]:
        return {k: v for k, v in self.point.items() if not k.startswith("__")}

    @property
    def duration(self) -> float:
        return self.ended - self.started

    def to_json(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "kind": self.kind,
            "point": dict(self.point),
            "flags": dict(self.flags),
            "state": self.state,
            "loss": self.loss,
            "objective": _json_num(self.objective),
            "reason": self.reason,
            "log_tail": self.log_tail,
            "notes": list(self.notes),
            "measurement": self.measurement.to_json() if self.measurement else None,
            "started": self.started,
            "ended": self.ended,
            "timings": dict(self.timings),
            "violations": dict(self.violations),
        }

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Trial:
        m = body.get("measurement")
        return cls(
            number=int(body["number"]),
            kind=str(body["kind"]),
            point=dict(body.get("point") or {}),
            flags=dict(body.get("flags") or {}),
            state=str(body["state"]),
            loss=float(body["loss"]),
            objective=None if body.get("objective") is None else float(body["objective"]),
            reason=str(body.get("reason", "")),
            log_tail=str(body.get("log_tail", "")),
            notes=tuple(body.get("notes") or ()),
            measurement=Measurement.from_json(m) if m else None,
            started=float(body.get("started", 0.0)),
            ended=float(body.get("ended", 0.0)),
            timings=dict(body.get("timings") or {}),
            violations=dict(body.get("violations") or {}),
        )


def _json_num(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


# ----------------------------------------------------------------------------- scoring


def objective_value(m: Measurement, objective: Objective) -> float:
    """The objective in its natural unit: tok/s (throughput, goodput) or $/Mtok (cost)."""
    if objective.kind == "goodput":
        return m.goodput_tok_per_s
    if objective.kind == "cost":
        return dollars_per_mtok(m.output_tok_per_s, objective.dollars_per_hour or 0.0)
    return m.output_tok_per_s


def dollars_per_mtok(tok_per_s: float, dollars_per_hour: float) -> float:
    """$ per million output tokens at a sustained rate (inf at zero throughput)."""
    if not tok_per_s or tok_per_s <= 0 or not math.isfinite(tok_per_s):
        return math.inf
    return dollars_per_hour / (tok_per_s * 3600.0) * 1e6


def slo_violations(m: Measurement, slo: TuneSLO) -> dict[str, float]:
    """``{slo name: measured / threshold}`` for every SLO the measurement missed."""
    out: dict[str, float] = {}
    checks = (
        ("ttft_p99_seconds", m.ttft_p99),
        ("itl_p99_seconds", m.itl_p99),
        ("e2e_p99_seconds", m.e2e_p99),
        ("error_rate", m.error_rate),
    )
    for name, measured in checks:
        limit = getattr(slo, name)
        if limit is None:
            continue
        if math.isnan(measured):
            out[name] = math.inf if name != "error_rate" else 0.0
            if name == "error_rate":
                out.pop(name)
            continue
        if measured > limit:
            out[name] = measured / limit
    return out


def relative(value: float, reference: float | None, objective: Objective) -> float:
    """Objective value relative to the baseline's, oriented so larger is better."""
    if value is None or not math.isfinite(value) or value < 0:
        return 0.0
    if not reference or not math.isfinite(reference) or reference <= 0:
        reference = 1.0
    if objective.higher_is_better:
        return value / reference
    return reference / value if value > 0 else 0.0


def score_trial(
    m: Measurement | None, objective: Objective, slo: TuneSLO, reference: float | None
) -> tuple[str, float | None, float, dict[str, float]]:
    """(state, objective value, loss, violations) for a run (``m is None``: failed).

    The loss is what the optimizer minimizes: ``-value/baseline`` (so the baseline scores -1)
    for runs that met the SLO; for runs that missed it, a value in (0, 0.5] that grows with
    how far the SLO was missed (all worse than any feasible run, but a gradient toward the
    feasible region); ``1.0`` for failed runs.
    """
    if m is None:
        return "failed", None, FAILED_LOSS, {}
    value = objective_value(m, objective)
    violations = slo_violations(m, slo)
    if violations:
        excess = sum(min(4.0, v - 1.0) if math.isfinite(v) else 4.0 for v in violations.values())
        loss = min(SLO_LOSS_MAX, 0.05 + 0.45 * excess / 4.0)
        return "slo", value, loss, violations
    return "ok", value, -relative(value, reference, objective), {}


# ----------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class Step:
    """One trial to run: its kind, the point (knob values) and the flags to launch with."""

    kind: str
    point: Mapping[str, Any]
    flags: Mapping[str, Any] | None
    notes: tuple[str, ...] = ()
    x: tuple[Any, ...] | None = None

    @property
    def subject(self) -> str:
        if self.kind == "baseline" or self.point.get("__subject__") == "baseline":
            return "baseline"
        return point_key(self.point)


def make_optimizer(cfg: TuneConfig) -> Any:
    """A fresh ``skopt.Optimizer`` over the config's space."""
    from skopt import Optimizer

    n_dims = len(cfg.space.knobs)
    return Optimizer(
        cfg.space.dimensions(),
        base_estimator=cfg.optimizer.estimator,
        n_initial_points=max(1, min(cfg.optimizer.initial_points, cfg.budget.trials)),
        acq_func=cfg.optimizer.acq_func
        if cfg.optimizer.estimator == "GP" or cfg.optimizer.acq_func != "gp_hedge"
        else "EI",
        acq_optimizer="sampling" if n_dims > 0 else "auto",
        random_state=cfg.optimizer.seed,
    )


def told_history(trials: Sequence[Trial], space: Space) -> tuple[list[list[Any]], list[float]]:
    """The (x, loss) pairs the optimizer learns from: every trial on a point inside the space.

    Search, repeat and rejected trials carry their asked point; the baseline is included when
    its flags fall inside the space. Confirmation runs are left out (they re-measure points
    the optimizer already knows, interleaved with the baseline, for the final comparison only).
    """
    xs: list[list[Any]] = []
    ys: list[float] = []
    for t in sorted(trials, key=lambda t: t.number):
        if t.kind == "confirm":
            continue
        point = t.search_point if t.kind != "baseline" else space.point_from_flags(t.flags)
        if point is None or any(k.name not in point for k in space.knobs):
            continue
        if not all(k.contains(point[k.name]) for k in space.knobs):
            continue
        xs.append(space.x(point))
        ys.append(float(t.loss))
    return xs, ys


def tell_history(optimizer: Any, trials: Sequence[Trial], space: Space) -> int:
    """Re-teach an optimizer the finished trials (resume); returns how many points it learnt."""
    xs, ys = told_history(trials, space)
    if xs:
        optimizer.tell(xs, ys)
    return len(xs)


@dataclass(frozen=True)
class Candidate:
    """A point's runs aggregated: the basis of finalists, the winner and the final comparison."""

    subject: str
    point: Mapping[str, Any]
    flags: Mapping[str, Any]
    runs: tuple[Trial, ...]

    @property
    def ok_runs(self) -> tuple[Trial, ...]:
        return tuple(t for t in self.runs if t.state == "ok" and t.objective is not None)

    @property
    def values(self) -> list[float]:
        return [
            float(t.objective)
            for t in self.runs
            if t.state in ("ok", "slo") and t.objective is not None
        ]

    @property
    def feasible(self) -> bool:
        launched = [t for t in self.runs if t.state != "rejected"]
        return bool(launched) and len(self.ok_runs) * 2 >= len(launched)

    @property
    def mean(self) -> float:
        vals = self.values
        return statistics.fmean(vals) if vals else math.nan

    @property
    def stdev(self) -> float:
        vals = self.values
        return statistics.stdev(vals) if len(vals) > 1 else math.nan

    @property
    def best_loss(self) -> float:
        return min(t.loss for t in self.runs)

    @property
    def mean_loss(self) -> float:
        return statistics.fmean(t.loss for t in self.runs)


def candidates(trials: Sequence[Trial], include_confirm: bool = True) -> dict[str, Candidate]:
    """Trials grouped by subject (``baseline`` or a point key), runs in trial order."""
    groups: dict[str, list[Trial]] = {}
    for t in sorted(trials, key=lambda t: t.number):
        if t.kind == "confirm" and not include_confirm:
            continue
        groups.setdefault(t.subject, []).append(t)
    out = {}
    for subject, runs in groups.items():
        first = runs[0]
        out[subject] = Candidate(subject, first.search_point, first.flags, tuple(runs))
    return out


def finalists(trials: Sequence[Trial], noise: Noise) -> list[Candidate]:
    """The best ``noise.finalists`` searched points that met the SLO, best first."""
    pool = [
        c
        for s, c in candidates([t for t in trials if t.kind in ("search", "repeat")]).items()
        if s != "baseline" and any(t.state == "ok" for t in c.runs if t.kind == "search")
    ]
    pool.sort(key=lambda c: (min(t.loss for t in c.runs if t.kind == "search"), c.subject))
    return pool[: noise.finalists] if noise.finalists > 0 else pool[:1]


def choose_winner(trials: Sequence[Trial], noise: Noise, objective: Objective) -> Candidate | None:
    """The finalist with the best mean objective among those that met the SLO in most runs.

    Confirmation runs are not used here, so the winner is stable once the repeats are done.
    """
    feasible = [c for c in finalists(trials, noise) if c.feasible]
    if not feasible:
        return None
    sign = -1.0 if objective.higher_is_better else 1.0
    feasible.sort(
        key=lambda c: (
            sign * statistics.fmean(float(t.objective or 0) for t in c.ok_runs),
            c.subject,
        )
    )
    return feasible[0]


def search_elapsed(trials: Sequence[Trial]) -> float:
    """Seconds spent in trials so far (summed, so it survives a resume)."""
    return sum(max(0.0, t.duration) for t in trials)


def plan_steps(
    trials: Sequence[Trial],
    cfg: TuneConfig,
    optimizer: Any,
    k: int = 1,
    budget_trials: int | None = None,
) -> list[Step]:
    """The next steps (at most ``k``, to run concurrently), or ``[]`` when the search is done.

    A pure function of the finished trials (and the optimizer they taught), so a resumed
    search continues exactly where it stopped. Raises TuneError when the baseline failed.
    """
    budget = cfg.budget.trials if budget_trials is None else budget_trials
    base = [t for t in trials if t.kind == "baseline"]
    if not base:
        return [Step("baseline", {"__subject__": "baseline"}, dict(cfg.baseline_flags))]
    if base[0].state in ("failed", "rejected"):
        b = base[0]
        raise TuneError(
            f"the baseline (trial {b.number}) failed ({b.reason}); stopping: if the base "
            f"command never starts, no candidate will.\n--- log tail ---\n{b.log_tail}"
        )

    searched = [t for t in trials if t.kind == "search"]
    over_time = cfg.budget.wall_time is not None and search_elapsed(trials) >= cfg.budget.wall_time
    if len(searched) < budget and not over_time:
        n = min(k, budget - len(searched))
        asked = optimizer.ask(n_points=n) if n > 1 else [optimizer.ask()]
        steps = []
        for x in asked:
            point = cfg.space.point(x)
            flags, notes = apply_constraints(
                {**cfg.launch.flags, **cfg.space.flags(point)}, cfg.space, cfg.constraints
            )
            steps.append(Step("search", point, flags, notes, tuple(point.values())))
        return steps

    repeats: list[Step] = []
    for c in finalists(trials, cfg.noise):
        done = sum(1 for t in c.runs if t.kind in ("search", "repeat"))
        for _ in range(max(0, 1 + cfg.noise.repeats - done)):
            repeats.append(Step("repeat", dict(c.point), dict(c.flags)))
    if repeats:
        return repeats[:k]

    winner = choose_winner(trials, cfg.noise, cfg.objective)
    if winner is None or cfg.noise.confirm_rounds <= 0:
        return []
    confirms = [t for t in trials if t.kind == "confirm"]
    cb = sum(1 for t in confirms if t.subject == "baseline")
    cw = sum(1 for t in confirms if t.subject == winner.subject)
    rounds = cfg.noise.confirm_rounds
    out: list[Step] = []
    while len(out) < k and cb + cw < 2 * rounds:
        if cb <= cw:
            out.append(Step("confirm", {"__subject__": "baseline"}, dict(cfg.baseline_flags)))
            cb += 1
        else:
            out.append(Step("confirm", dict(winner.point), dict(winner.flags)))
            cw += 1
    return out


# ----------------------------------------------------------------------------- the outcome


@dataclass(frozen=True)
class Comparison:
    """Winner against baseline over all their runs (baseline first + interleaved confirms)."""

    baseline_mean: float
    baseline_stdev: float
    baseline_n: int
    winner_mean: float
    winner_stdev: float
    winner_n: int
    gain: float
    gain_low: float
    gain_high: float
    significant: bool
    verdict: str


def compare(
    winner: Candidate, baseline: Candidate, objective: Objective, noise: Noise
) -> Comparison:
    """Gain of the winner over the baseline with its spread, and whether it beats the noise.

    ``gain`` is the relative improvement (throughput up, or $/Mtok down, as a fraction). With
    two or more runs on each side the gain is significant when the difference of means exceeds
    twice its standard error and ``noise.min_gain``; with a single run on either side there is
    no spread to estimate, so it must exceed ``noise.single_run_noise`` (restart-to-restart
    noise measured on vLLM CPU).
    """
    bv, wv = baseline.values, winner.values
    bm = statistics.fmean(bv) if bv else math.nan
    wm = statistics.fmean(wv) if wv else math.nan
    bs = statistics.stdev(bv) if len(bv) > 1 else math.nan
    ws = statistics.stdev(wv) if len(wv) > 1 else math.nan
    if objective.higher_is_better:
        gain = wm / bm - 1 if bm > 0 else math.inf
    else:
        gain = bm / wm - 1 if wm > 0 else -1.0
    if len(bv) > 1 and len(wv) > 1 and bm > 0:
        se = math.sqrt(bs**2 / len(bv) + ws**2 / len(wv))
        diff = (wm - bm) if objective.higher_is_better else (bm - wm)
        rel_se = se / bm
        low, high = gain - 2 * rel_se, gain + 2 * rel_se
        significant = diff > 2 * se and gain >= noise.min_gain
    else:
        low, high = gain - noise.single_run_noise, gain + noise.single_run_noise
        significant = gain >= noise.single_run_noise
    if significant:
        verdict = f"significant gain: {gain * 100:+.1f}% ({low * 100:+.1f}% .. {high * 100:+.1f}%)"
    else:
        verdict = (
            f"no significant gain: {gain * 100:+.1f}% is inside the noise "
            f"({low * 100:+.1f}% .. {high * 100:+.1f}%)"
        )
    return Comparison(bm, bs, len(bv), wm, ws, len(wv), gain, low, high, significant, verdict)


@dataclass(frozen=True)
class TuneOutcome:
    """Everything the report needs."""

    config: TuneConfig
    trials: tuple[Trial, ...]
    baseline: Candidate | None
    winner: Candidate | None
    comparison: Comparison | None
    best_infeasible: tuple[Candidate, ...]
    complete: bool
    best_flags: Mapping[str, Any] = field(default_factory=dict)
    best_args: tuple[str, ...] = ()
    recommend: str = "baseline"

    @property
    def slo_met(self) -> bool:
        return self.winner is not None


def summarize_search(
    cfg: TuneConfig, trials: Sequence[Trial], complete: bool = True
) -> TuneOutcome:
    """Pick winner and baseline, compare them, and list the best infeasible points."""
    groups = candidates(trials)
    baseline = groups.get("baseline")
    winner = choose_winner(trials, cfg.noise, cfg.objective)
    if winner is not None:
        winner = groups.get(winner.subject, winner)  # with confirmation runs
    comparison = None
    if winner is not None and baseline is not None and baseline.values:
        comparison = compare(winner, baseline, cfg.objective, cfg.noise)
    infeasible = [c for s, c in groups.items() if s != "baseline" and not c.feasible and c.values]
    infeasible.sort(key=lambda c: (c.mean_loss, c.subject))
    # Recommend the winner only when it beat the baseline beyond the noise.
    recommend = "winner" if winner is not None and (
        comparison is None or comparison.significant
    ) else "baseline"
    best = winner if recommend == "winner" else baseline
    best_flags = dict(best.flags) if best is not None else dict(cfg.baseline_flags)
    return TuneOutcome(
        cfg,
        tuple(sorted(trials, key=lambda t: t.number)),
        baseline,
        winner,
        comparison,
        tuple(infeasible[:5]),
        complete,
        best_flags,
        tuple(serve_args(cfg, best_flags)),
        recommend,
    )


def serve_args(cfg: TuneConfig, flags: Mapping[str, Any]) -> list[str]:
    """The vLLM arguments for a flag set: ``--model M [--served-model-name N] --flag v ...``."""
    from tuner.canary import flag_args

    args = ["--model", cfg.launch.model]
    if cfg.launch.served_model_name:
        args += ["--served-model-name", cfg.launch.served_model_name]
    return args + flag_args(flags)


# ----------------------------------------------------------------------------- progress


class TuneObserver(Protocol):
    """Receives progress; the CLI shows it live (``tuner.report``), the daemon publishes it."""

    def trial_started(self, number: int, step: Step) -> None: ...

    def trial_finished(self, trial: Trial, planned: int) -> None: ...


class TuneCounters:
    """Thread-safe progress counters for ``/metrics``: ``tuner_tune_trials_total{state}`` and
    ``tuner_tune_best_objective``. Register an instance as an observer; read ``snapshot()``."""

    def __init__(self, objective: Objective | None = None) -> None:
        self._lock = threading.Lock()
        self.objective = objective or Objective()
        self.trials_total: dict[str, int] = dict.fromkeys(STATES, 0)
        self.running = 0
        self.best_objective: float | None = None

    def trial_started(self, number: int, step: Step) -> None:
        with self._lock:
            self.running += 1

    def trial_finished(self, trial: Trial, planned: int) -> None:
        with self._lock:
            self.running = max(0, self.running - 1)
            self.trials_total[trial.state] = self.trials_total.get(trial.state, 0) + 1
            if trial.state == "ok" and trial.objective is not None:
                better = (
                    self.best_objective is None
                    or (trial.objective > self.best_objective) == self.objective.higher_is_better
                )
                if better:
                    self.best_objective = trial.objective

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "trials_total": dict(self.trials_total),
                "running": self.running,
                "best_objective": self.best_objective,
            }


# ----------------------------------------------------------------------------- persistence


class TrialLog:
    """Trials of one search in ``OUT/tune.db`` (``tuner.store`` documents), written as they end.

    The same store receives the canaries' scraped samples (``instance="trial-N"``).
    """

    def __init__(self, out: Path) -> None:
        from tuner.store import Store

        self.path = out / "tune.db"
        try:
            self.store = Store(self.path, retention=3650 * 86400.0, max_bytes=1 << 40)
        except StoreError as exc:
            raise TuneError(f"cannot open the search store: {exc}") from None

    def close(self) -> None:
        self.store.close()

    def trials(self) -> list[Trial]:
        return [Trial.from_json(b) for _, _, b in self.store.documents(TRIAL_DOC)]

    def meta(self) -> dict[str, Any] | None:
        docs = self.store.documents(META_DOC)
        return dict(docs[0][2]) if docs else None

    def put_meta(self, body: Mapping[str, Any]) -> None:
        self._write(lambda: self.store.put_document(META_DOC, "search", dict(body)), "metadata")

    def put(self, trial: Trial) -> None:
        self._write(
            lambda: self.store.put_document(
                TRIAL_DOC, f"{trial.number:05d}", trial.to_json(), ts=trial.ended
            ),
            f"trial {trial.number}",
        )

    def _write(self, fn: Callable[[], None], what: str) -> None:
        try:
            fn()
        except StoreError as exc:
            full = "full" in str(exc).lower() or "disk" in str(exc).lower()
            hint = (
                (
                    " — the disk under it is full: free space, then rerun with --resume "
                    "(trials persisted so far are kept)"
                )
                if full
                else ""
            )
            raise TuneError(f"cannot persist {what} to {self.path}: {exc}{hint}") from None


# ----------------------------------------------------------------------------- running a trial


@dataclass(frozen=True)
class TrialContext:
    """What ``run_trial`` needs besides the step: config, store, logs dir, an HTTP client."""

    cfg: TuneConfig
    store: Any
    logs: Path
    client: Any
    load_spec: Any
    stop: threading.Event


def _canary_for(ctx: TrialContext, number: int, flags: Mapping[str, Any], slot: int) -> Any:
    from tuner import canary as canary_mod

    cfg = ctx.cfg
    env = dict(cfg.launch.env)
    if cfg.canary.omp_binds:
        env["VLLM_CPU_OMP_THREADS_BIND"] = cfg.canary.omp_binds[slot % len(cfg.canary.omp_binds)]
    spec = canary_mod.LaunchSpec(
        command=cfg.launch.command,
        model=cfg.launch.model,
        flags=dict(flags),
        env=env,
        host=cfg.launch.host,
        served_model_name=cfg.launch.served_model_name,
    )
    log_path = ctx.logs / f"trial-{number:04d}.log"
    if cfg.canary.backend == "kubernetes":
        assert cfg.canary.pod_template is not None
        return canary_mod.KubernetesCanary(
            spec,
            cfg.canary.pod_template,
            f"tuner-canary-{number:04d}-{os.getpid()}",
            log_path,
            namespace=cfg.canary.namespace,
            health_timeout=cfg.canary.health_timeout,
        )
    return canary_mod.LocalCanary(spec, log_path, health_timeout=cfg.canary.health_timeout)


class _Scraper:
    """Scrapes a canary's /metrics into the store every interval until stopped."""

    def __init__(self, ctx: TrialContext, url: str, instance: str) -> None:
        from tuner.config import Target

        self.ctx = ctx
        self.target = Target(name=instance, url=url, kind="vllm")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"scrape-{instance}", daemon=True)
        self.scrapes = 0
        self.seconds = 0.0
        self.error: str = ""

    def scrape_once(self) -> None:
        from tuner.scrape import scrape_target

        t0 = time.perf_counter()
        outcome = scrape_target(
            self.ctx.client, self.target, timeout=5.0, max_bytes=10 * 1024 * 1024
        )
        if outcome.up:
            self.ctx.store.append(outcome.samples, int(outcome.ts * 1000))
            self.scrapes += 1
        else:
            self.error = outcome.error
        self.seconds += time.perf_counter() - t0

    def _run(self) -> None:
        while not self._stop.wait(self.ctx.cfg.canary.scrape_interval):
            try:
                self.scrape_once()
            except TunerError as exc:
                self.error = str(exc)

    def start(self) -> None:
        self.scrape_once()
        self._thread.start()

    def finish(self) -> None:
        self._stop.set()
        self._thread.join()
        self.scrape_once()


def server_signals(store: Any, instance: str, start_ms: int, end_ms: int) -> dict[str, float]:
    """Server-side signals of one canary over its load window, from its scraped samples.

    The same named PromQL signals as production (``tuner.signals.WINDOW_TOTALS``, rendered
    for ``instance="trial-N"`` over the window), evaluated by the in-process engine
    (``tuner.promql.Engine``) over the search's store; KV usage by ``max_over_time`` and
    ``avg_over_time`` of ``vllm:kv_cache_usage_perc``.
    """
    from tuner.promql import Engine
    from tuner.signals import WINDOW_TOTALS, per_thousand_requests, render_signal

    engine = Engine(store)
    window = f"{max(1, math.ceil((end_ms - start_ms) / 1000))}s"
    selector = f'{{instance="{instance}"}}'
    ts = end_ms / 1000.0

    def query(expr: str) -> float:
        result = engine.instant(expr, ts)
        vector = getattr(result, "vector", ())
        return float(vector[0].value) if vector else math.nan

    totals = {
        sig.name: query(render_signal(sig, selector, by="instance", window=window))
        for sig in WINDOW_TOTALS
        if sig.name
        in ("requests", "preemptions", "output_tokens", "spec_draft_tokens", "spec_accepted_tokens")
    }
    kv = f"vllm:kv_cache_usage_perc{selector}[{window}]"
    drafts = totals["spec_draft_tokens"]
    return {
        "preemptions": totals["preemptions"],
        "preemptions_per_1k_requests": per_thousand_requests(
            totals["preemptions"], totals["requests"]
        )
        if not math.isnan(totals["requests"])
        else math.nan,
        "kv_usage_max": query(f"max by (instance) (max_over_time({kv}))"),
        "kv_usage_mean": query(f"max by (instance) (avg_over_time({kv}))"),
        "spec_decode_acceptance": (
            totals["spec_accepted_tokens"] / drafts if drafts and drafts > 0 else math.nan
        ),
        "server_generation_tokens": totals["output_tokens"],
    }


def goodput(result: Any, slo: TuneSLO, duration: float) -> float:
    """Output tok/s of the requests that met the per-request TTFT and ITL thresholds."""
    if duration <= 0:
        return 0.0
    good = 0
    for rec in getattr(result, "records", ()):
        if not getattr(rec, "ok", False):
            continue
        ttft = getattr(rec, "ttft", None)
        if slo.ttft_p99_seconds is not None and (ttft is None or ttft > slo.ttft_p99_seconds):
            continue
        itls = list(getattr(rec, "itls", ()) or ())
        if slo.itl_p99_seconds is not None and itls and max(itls) > slo.itl_p99_seconds:
            continue
        good += int(getattr(rec, "output_tokens", 0) or 0)
    return good / duration


def measurement_from(
    summary: LoadSummary, signals: Mapping[str, float], good: float
) -> Measurement:
    extra: dict[str, Any] = {k: float(v) for k, v in signals.items()}
    client = {f.name: getattr(summary, f.name) for f in fields(LoadSummary)}
    return Measurement(**client, goodput_tok_per_s=good, **extra)


def run_trial(
    ctx: TrialContext, number: int, step: Step, reference: float | None, slot: int = 0
) -> Trial | None:
    """Run one step on a fresh canary and return the finished trial.

    Returns None when the search was interrupted while the trial ran (it is not recorded,
    so a resumed search runs it again). The canary is always stopped.
    """
    from tuner import load as load_mod
    from tuner.canary import CanaryFailed

    cfg = ctx.cfg
    started = time.time()
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    if step.flags is None:
        return Trial(
            number,
            step.kind,
            dict(step.point),
            {},
            "rejected",
            FAILED_LOSS,
            reason="constraint",
            notes=step.notes,
            started=started,
            ended=time.time(),
            timings={"total_s": time.perf_counter() - t0},
        )
    canary = _canary_for(ctx, number, step.flags, slot)
    reason = ""
    log_tail = ""
    measurement: Measurement | None = None
    notes = list(step.notes)
    try:
        try:
            handle = canary.start()
        except CanaryFailed as exc:
            reason, log_tail = exc.reason, exc.log_tail
            handle = None
        timings["start_s"] = time.perf_counter() - t0
        if handle is not None and not ctx.stop.is_set():
            instance = f"trial-{number}"
            scraper = _Scraper(ctx, handle.metrics_url, instance)
            t_scr = time.perf_counter()
            window_start = int(time.time() * 1000)
            scraper.start()
            scrape_s = time.perf_counter() - t_scr
            t_load = time.perf_counter()
            model = cfg.launch.served_model_name or cfg.launch.model
            try:
                result = load_mod.run_load_sync(handle.url, model, ctx.load_spec)
                load_error = ""
            except TunerError as exc:
                result, load_error = None, str(exc)
            timings["load_s"] = time.perf_counter() - t_load
            t_scr = time.perf_counter()
            scraper.finish()
            window_end = int(time.time() * 1000)
            timings["scrape_s"] = scrape_s + time.perf_counter() - t_scr
            if ctx.stop.is_set():
                return None
            t_sig = time.perf_counter()
            if result is None:
                reason, log_tail = "load_error", load_error + "\n" + canary_tail(canary)
            else:
                summary = load_mod.summarize(result)
                try:
                    signals = server_signals(ctx.store, instance, window_start, window_end)
                except TunerError as exc:
                    signals = {}
                    notes.append(f"server signals unavailable: {exc}")
                measurement = measurement_from(
                    summary, signals, goodput(result, cfg.slo, float(summary.duration or 0))
                )
                if measurement.requests == 0 or measurement.error_rate > cfg.max_error_rate:
                    reason = "load_errors"
                    alive = getattr(canary, "alive", lambda: True)()
                    log_tail = (
                        f"{measurement.errors}/{measurement.requests} requests failed "
                        f"(error rate {measurement.error_rate:.0%} > "
                        f"{cfg.max_error_rate:.0%} allowed)"
                        + ("" if alive else "; the server exited during the load")
                        + "\n"
                        + canary_tail(canary)
                    )
                    measurement = None if not alive else measurement
            if scraper.error and scraper.scrapes < 2:
                notes.append(f"server signals incomplete: {scraper.error}")
            timings["signals_s"] = time.perf_counter() - t_sig
    finally:
        t_stop = time.perf_counter()
        canary.stop()
        timings["stop_s"] = time.perf_counter() - t_stop
    if ctx.stop.is_set():
        return None
    violations: dict[str, float] = {}
    if reason:
        state, value, loss = "failed", None, FAILED_LOSS
        if measurement is not None:  # ran, but too many errors: failed, keep the numbers
            value = objective_value(measurement, cfg.objective)
    else:
        state, value, loss, violations = score_trial(measurement, cfg.objective, cfg.slo, reference)
    ended = time.time()
    timings["total_s"] = time.perf_counter() - t0
    return Trial(
        number,
        step.kind,
        dict(step.point),
        dict(step.flags),
        state,
        loss,
        value,
        reason,
        log_tail,
        tuple(notes),
        measurement,
        started,
        ended,
        timings,
        violations,
    )


def canary_tail(canary: Any) -> str:
    fn = getattr(canary, "log_tail", None)
    return str(fn()) if callable(fn) else ""


# ----------------------------------------------------------------------------- the search


@dataclass(frozen=True)
class TuneOptions:
    out: Path
    trials: int | None = None
    resume: bool = False
    parallel: int = 1


def prepare_out(cfg: TuneConfig, log: TrialLog, resume: bool) -> list[Trial]:
    """Check the out dir against the config; returns the trials to continue from."""
    trials = log.trials()
    meta = log.meta()
    if trials and not resume:
        raise TuneError(
            f"{log.path} already holds {len(trials)} trials of a search; pass --resume to "
            "continue it, or choose another --out (nothing was changed)"
        )
    if meta is not None and meta.get("fingerprint") != cfg.fingerprint() and trials:
        raise TuneError(
            f"{log.path} holds a search with a different launch/space/objective/SLO/load "
            f"(fingerprint {meta.get('fingerprint')} != {cfg.fingerprint()}); resume it with "
            "its own config, or choose another --out (nothing was changed)"
        )
    return trials


def run_tune(
    cfg: TuneConfig,
    options: TuneOptions,
    observers: Sequence[TuneObserver] = (),
    install_signals: bool = True,
    stop: threading.Event | None = None,
) -> TuneOutcome:
    """Run (or resume) a search; persist each trial when it ends; return the outcome.

    On SIGTERM or SIGINT the running canaries are stopped, the trial in flight is dropped
    (a resume runs it again) and TuneInterrupted is raised. A caller that runs the search in a
    thread (the daemon's tuning window) passes ``stop`` and sets it (after stopping the
    canaries) to get the same outcome.
    """
    from tuner.canary import stop_all_canaries
    from tuner.scrape import make_client

    if options.parallel < 1:
        raise TuneError(f"--parallel must be at least 1, got {options.parallel}")
    out = options.out
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TuneError(f"cannot create output directory {out}: {exc.strerror or exc}") from None
    log = TrialLog(out)
    trials = prepare_out(cfg, log, options.resume)
    log.put_meta(
        {
            "fingerprint": cfg.fingerprint(),
            "source": str(cfg.source or ""),
            "model": cfg.launch.model,
        }
    )
    budget = options.trials if options.trials is not None else cfg.budget.trials
    if budget < 1:
        raise TuneError(f"--trials must be at least 1, got {budget}")
    cfg = replace(cfg, budget=replace(cfg.budget, trials=budget))
    optimizer = make_optimizer(cfg)
    tell_history(optimizer, trials, cfg.space)

    stop = stop if stop is not None else threading.Event()
    received: list[int] = []
    previous: dict[int, Any] = {}

    def on_signal(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        stop.set()
        stop_all_canaries()
        raise TuneInterrupted(signum, f"interrupted by signal {signum}")

    if install_signals and threading.current_thread() is threading.main_thread():
        for s in (signal.SIGTERM, signal.SIGINT):
            previous[s] = signal.signal(s, on_signal)
    client = make_client(max_connections=8)  # scrapes the canaries, as the daemon does
    ctx = TrialContext(cfg, log.store, out / "logs", client, build_load_spec(cfg.load), stop)
    pool = ThreadPoolExecutor(max_workers=options.parallel) if options.parallel > 1 else None
    try:
        while True:
            planned = planned_total(cfg)
            steps = plan_steps(trials, cfg, optimizer, options.parallel)
            if not steps:
                break
            base = next((t for t in trials if t.kind == "baseline"), None)
            reference = base.objective if base is not None and base.objective else None
            next_no = max((t.number for t in trials), default=-1) + 1
            numbered = list(enumerate(steps, start=next_no))
            for n, step in numbered:
                for ob in observers:
                    ob.trial_started(n, step)
            if pool is None:
                results = [run_trial(ctx, n, step, reference) for n, step in numbered]
            else:
                futures = [
                    pool.submit(run_trial, ctx, n, step, reference, slot)
                    for slot, (n, step) in enumerate(numbered)
                ]
                results = [f.result() for f in futures]
            finished = [t for t in results if t is not None]
            for t in finished:
                log.put(t)
                trials.append(t)
                for ob in observers:
                    ob.trial_finished(t, planned)
            searched = [
                t for t in finished if t.kind in ("search", "repeat") or (t.kind == "baseline")
            ]
            xs, ys = told_history(searched, cfg.space)
            if xs:
                optimizer.tell(xs, ys)
            if stop.is_set():
                raise TuneInterrupted(received[0] if received else signal.SIGTERM, "interrupted")
    except TuneInterrupted as exc:
        stop.set()
        stop_all_canaries()
        raise TuneInterrupted(
            exc.exit_code - 128,
            f"interrupted: canaries stopped; {len(trials)} finished trials are in {log.path}; "
            "rerun with --resume to continue",
        ) from None
    finally:
        stop.set()
        stop_all_canaries()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        client.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        log.close()
    return summarize_search(cfg, trials, complete=True)


def planned_total(cfg: TuneConfig, trials: int | None = None) -> int:
    """Trials a full search runs: baseline, search budget, finalist repeats, confirmations."""
    n = cfg.noise
    budget = cfg.budget.trials if trials is None else trials
    return 1 + budget + n.finalists * n.repeats + 2 * n.confirm_rounds


def load_trials(out: Path) -> list[Trial]:
    """The persisted trials of a search directory (for reports and tests)."""
    log = TrialLog(out)
    try:
        return log.trials()
    finally:
        log.close()


def iter_points(trials: Iterable[Trial]) -> Iterable[Mapping[str, Any]]:
    for t in trials:
        yield t.search_point
