"""``tune.yaml`` -> a frozen ``TuneConfig``; errors name the file, the key and what is allowed.

Sections: ``launch`` (command, model, flags, env, host, served_model_name: a
``tuner.canary.LaunchSpec``), ``baseline`` (flags over the launch flags), ``space``
(``tuner.tune.parse_space``), ``constraints``, ``objective`` (``ObjectiveKind``: throughput,
cost in $/Mtok, goodput), ``slo``, ``load`` (``tuner.tune.parse_load``; plus
``max_error_rate``), ``budget``, ``noise``, ``optimizer``, ``canary`` (``CanaryBackend``:
local or kubernetes), ``cpus`` (pinning: ``auto``, ``off`` or ``{canary: "0", load: "1"}``,
``tuner.tune.cpus``), ``out`` and ``report``. Relative paths are relative to the file.
``TuneConfig.fingerprint`` identifies what makes trials comparable, so a resume with another
config is refused.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml

from tuner.canary import DEFAULT_COMMAND, RESERVED_FLAGS, CanaryBackend, LaunchSpec
from tuner.config import _Reader, read_yaml
from tuner.errors import ConfigError
from tuner.httpconfig import (
    DEFAULT_HTTP_CONFIG,
    HTTP_CONFIG_KEYS,
    HTTPClientConfig,
    parse_http_config,
)
from tuner.tune.cpus import CpuMode, CpuRequest, parse_cpu_list
from tuner.tune.parse_load import build_load_spec
from tuner.tune.parse_space import expand_env, parse_flags, parse_space
from tuner.tune.space import Constraints, Space

ESTIMATORS = ("GP", "RF", "ET")
ACQ_FUNCS = ("gp_hedge", "EI", "PI", "LCB")


class ObjectiveKind(StrEnum):
    """What a search optimizes (``objective.kind``)."""

    THROUGHPUT = "throughput"
    COST = "cost"
    GOODPUT = "goodput"


@dataclass(frozen=True)
class Objective:
    """What the search optimizes: ``throughput`` (output tok/s, max), ``cost`` ($/Mtok, min)
    or ``goodput`` (output tok/s of requests that met the per-request SLO, max)."""

    kind: ObjectiveKind = ObjectiveKind.THROUGHPUT
    dollars_per_hour: float | None = None

    def __post_init__(self) -> None:  # "cost" and ObjectiveKind.COST are the same objective
        object.__setattr__(self, "kind", ObjectiveKind(self.kind))

    @property
    def higher_is_better(self) -> bool:
        return self.kind is not ObjectiveKind.COST

    @property
    def unit(self) -> str:
        return "$/Mtok" if self.kind is ObjectiveKind.COST else "tok/s"


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
    #: Stop a searched trial's load early when its partial throughput is already worse than
    #: the incumbent's beyond the noise (after ``early_stop_after`` of the load window).
    early_stop: bool = True
    early_stop_after: float = 0.35


class InitialDesign(StrEnum):
    """How the first ``optimizer.initial_points`` candidates are placed
    (``optimizer.initial_design``): space-filling (Latin hypercube, Sobol) or random."""

    LHS = "lhs"
    SOBOL = "sobol"
    RANDOM = "random"


@dataclass(frozen=True)
class OptimizerConfig:
    estimator: str = "GP"
    initial_points: int = 4
    seed: int = 0
    acq_func: str = "gp_hedge"
    initial_design: InitialDesign = InitialDesign.LHS

    def __post_init__(self) -> None:  # "lhs" and InitialDesign.LHS are the same design
        object.__setattr__(self, "initial_design", InitialDesign(self.initial_design))


@dataclass(frozen=True)
class CanaryConfig:
    backend: CanaryBackend = CanaryBackend.LOCAL
    health_timeout: float = 300.0
    scrape_interval: float = 1.0
    omp_binds: tuple[str, ...] = ()
    pod_template: Mapping[str, Any] | None = None
    namespace: str = "default"
    scheme: str = "http"  # kubernetes canaries: how their vLLM endpoints are reached
    http: HTTPClientConfig = DEFAULT_HTTP_CONFIG  # TLS, credentials of those endpoints

    def __post_init__(self) -> None:  # "local" and CanaryBackend.LOCAL are the same backend
        object.__setattr__(self, "backend", CanaryBackend(self.backend))


@dataclass(frozen=True)
class TuneConfig:
    source: Path | None
    launch: LaunchSpec
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
    cpus: CpuRequest = field(default_factory=CpuRequest)

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


def _keys(*names: str) -> dict[str, str]:
    return dict.fromkeys(names, "")


_TOP_KEYS = _keys("launch", "baseline", "space", "constraints", "objective", "slo", "load",
                  "budget", "noise", "optimizer", "canary", "out", "report", "cpus")
_LAUNCH_KEYS = _keys("command", "model", "flags", "env", "host", "served_model_name")
_CONSTRAINT_KEYS = _keys("repair", "max_model_len")
_OBJECTIVE_KEYS = _keys("kind", "dollars_per_hour")
_SLO_KEYS = _keys("ttft_p99_seconds", "itl_p99_seconds", "e2e_p99_seconds", "error_rate")
_BUDGET_KEYS = _keys("trials", "wall_time")
_NOISE_KEYS = _keys(*Noise.__dataclass_fields__)
_OPT_KEYS = _keys(*OptimizerConfig.__dataclass_fields__)
_CANARY_KEYS = _keys("backend", "health_timeout", "scrape_interval", "omp_binds", "scheme",
                     "http_config",
                     "pod_template", "namespace")
_REPORT_KEYS = _keys("container_name")


def load_tune_config(path: str | Path) -> TuneConfig:
    """Read and validate tune.yaml; raises ConfigError naming the file."""
    p = Path(path)
    return parse_tune_config(read_yaml(p, "tune config"), str(p))


def parse_tune_config(data: Any, source: str = "<tune config>") -> TuneConfig:
    """Validate a parsed tune.yaml and build a TuneConfig; raises ConfigError."""
    r = _Reader(source)
    top = r.mapping(data, "", _TOP_KEYS)
    base_dir = Path(source).parent if not source.startswith("<") else Path(".")
    # sections in file order, so the first error reported is the first one in the file
    launch = _parse_launch(r, top)
    baseline_flags = {**launch.flags, **parse_flags(r, top.get("baseline"), "baseline")}
    space = parse_space(r, top.get("space"))
    constraints = _parse_constraints(r, top.get("constraints"), launch)
    objective = _parse_objective(r, top.get("objective"))
    slo = _parse_slo(r, top.get("slo"), objective)
    load, max_err = _parse_load(r, top.get("load"), base_dir)
    budget = _parse_budget(r, top.get("budget"))
    noise = _parse_noise(r, top.get("noise"))
    optimizer = _parse_optimizer(r, top.get("optimizer"))
    canary = _parse_canary(r, top.get("canary"), base_dir)
    cpus = _parse_cpus(r, top.get("cpus", CpuMode.AUTO))
    out = Path(expand_env(r, top.get("out", "tune-out"), "out"))
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
        max_error_rate=max_err,
        budget=budget,
        noise=noise,
        optimizer=optimizer,
        canary=canary,
        out=out if out.is_absolute() else base_dir / out,
        container_name=r.string(rm.get("container_name", "vllm"), "report.container_name"),
        cpus=cpus,
    )


def _parse_cpus(r: _Reader, raw: Any) -> CpuRequest:
    """``cpus``: auto (default), off, or ``{canary: CPU list, load: CPU list}``, disjoint."""
    if raw is True or raw == CpuMode.AUTO or raw is None:
        return CpuRequest(CpuMode.AUTO)
    if raw is False or raw == CpuMode.OFF:  # YAML reads a bare `off` as false
        return CpuRequest(CpuMode.OFF)
    if not isinstance(raw, Mapping):
        raise r.fail("cpus", f"{raw!r} is not allowed; use auto, off, or "
                             "{canary: \"0\", load: \"1\"} (CPU lists)")
    cm = r.mapping(raw, "cpus", _keys("canary", "load"))
    lists = {}
    for key in ("canary", "load"):
        if key not in cm:
            raise r.fail(f"cpus.{key}", "is required with explicit cpus (a CPU list like \"0-2\")")
        try:
            lists[key] = parse_cpu_list(str(cm[key]), f"cpus.{key}")
        except ConfigError as exc:
            raise r.fail(f"cpus.{key}", str(exc).split(": ", 1)[-1]) from None
    shared = sorted(set(lists["canary"]) & set(lists["load"]))
    if shared:
        raise r.fail("cpus", f"canary and load share CPU(s) {shared}; they must be disjoint")
    return CpuRequest(CpuMode.FIXED, lists["canary"], lists["load"])


def _parse_launch(r: _Reader, top: Mapping[str, Any]) -> LaunchSpec:
    if "launch" not in top:
        raise r.fail("launch", "is required (command, model, flags, env)")
    lm = r.mapping(top["launch"], "launch", _LAUNCH_KEYS)
    if "model" not in lm:
        raise r.fail("launch.model", "is required (a model path or name)")
    cmd_raw = lm.get("command")
    if cmd_raw is None:
        command: tuple[str, ...] = DEFAULT_COMMAND
    elif isinstance(cmd_raw, str):
        command = tuple(shlex.split(expand_env(r, cmd_raw, "launch.command")))
    elif isinstance(cmd_raw, list) and cmd_raw:
        command = tuple(expand_env(r, c, f"launch.command[{i}]") for i, c in enumerate(cmd_raw))
    else:
        raise r.fail("launch.command", "must be a command line string or a non-empty list")
    if not command:
        raise r.fail("launch.command", "is empty")
    env_raw = lm.get("env") or {}
    if not isinstance(env_raw, Mapping):
        raise r.fail("launch.env", "must map variable names to values")
    env = {str(k): expand_env(r, v, f"launch.env.{k}") for k, v in env_raw.items()}
    flags = parse_flags(r, lm.get("flags"), "launch.flags")
    for reserved in sorted(RESERVED_FLAGS & set(flags)):
        raise r.fail(
            f"launch.flags.{reserved}",
            "is set by the tuner; use launch.model / launch.host / launch.served_model_name",
        )
    served = lm.get("served_model_name")
    return LaunchSpec(
        command=command,
        model=expand_env(r, lm["model"], "launch.model"),
        flags=flags,
        env=env,
        host=r.string(lm.get("host", "127.0.0.1"), "launch.host"),
        served_model_name=(
            r.string(served, "launch.served_model_name") if served is not None else None
        ),
    )


def _parse_constraints(r: _Reader, raw: Any, launch: LaunchSpec) -> Constraints:
    cm = r.mapping(raw, "constraints", _CONSTRAINT_KEYS)
    repair = cm.get("repair", True)
    if not isinstance(repair, bool):
        raise r.fail("constraints.repair", f"{repair!r} is not true or false")
    mml = cm.get("max_model_len", launch.flags.get("max-model-len"))
    if mml is not None and (isinstance(mml, bool) or not isinstance(mml, int) or mml <= 0):
        raise r.fail("constraints.max_model_len", f"{mml!r} is not a positive integer")
    return Constraints(repair=repair, max_model_len=mml)


def _parse_objective(r: _Reader, raw: Any) -> Objective:
    om = r.mapping(raw, "objective", _OBJECTIVE_KEYS)
    kind = om.get("kind", ObjectiveKind.THROUGHPUT)
    if kind not in tuple(ObjectiveKind):
        allowed = ", ".join(ObjectiveKind)
        raise r.fail("objective.kind", f"{kind!r} is not allowed; use one of {allowed}")
    dph = om.get("dollars_per_hour")
    dollars = r.positive(dph, "objective.dollars_per_hour") if dph is not None else None
    if kind == ObjectiveKind.COST and dollars is None:
        raise r.fail("objective.dollars_per_hour", "is required for objective kind cost ($/Mtok)")
    return Objective(ObjectiveKind(kind), dollars)


def _parse_slo(r: _Reader, raw: Any, objective: Objective) -> TuneSLO:
    sm = r.mapping(raw, "slo", _SLO_KEYS)
    slo_vals = {k: r.positive(v, f"slo.{k}") for k, v in sm.items() if v is not None}
    if slo_vals.get("error_rate", 0) >= 1:
        raise r.fail("slo.error_rate", "must be a fraction between 0 and 1")
    slo = TuneSLO(**slo_vals)
    if (objective.kind is ObjectiveKind.GOODPUT and slo.ttft_p99_seconds is None
            and slo.itl_p99_seconds is None):
        raise r.fail("slo", "objective goodput needs slo.ttft_p99_seconds or slo.itl_p99_seconds")
    return slo


def _parse_load(r: _Reader, raw: Any, base_dir: Path) -> tuple[dict[str, Any], float]:
    """The load section (workload path resolved) and ``max_error_rate``."""
    if not isinstance(raw, Mapping):
        raise r.fail(
            "load",
            "is required: a load shape (prompt_tokens, output_tokens, "
            "concurrency or request_rate, duration) or {workload: fingerprint.json}",
        )
    load = dict(raw)
    max_err = load.pop("max_error_rate", 0.2)
    if isinstance(max_err, bool) or not isinstance(max_err, int | float) or not 0 <= max_err < 1:
        raise r.fail("load.max_error_rate", f"{max_err!r} is not a fraction in [0, 1)")
    if "workload" in load:
        wl = Path(expand_env(r, load["workload"], "load.workload"))
        load["workload"] = str(wl if wl.is_absolute() else base_dir / wl)
    build_load_spec(load, r)  # refuse a bad load before anything starts
    return load, float(max_err)


def _parse_budget(r: _Reader, raw: Any) -> Budget:
    bm = r.mapping(raw, "budget", _BUDGET_KEYS)
    trials = bm.get("trials", 12)
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise r.fail("budget.trials", f"{trials!r} is not a positive integer")
    wall = r.duration(bm["wall_time"], "budget.wall_time") if "wall_time" in bm else None
    return Budget(trials, wall)


def _parse_noise(r: _Reader, raw: Any) -> Noise:
    nm = r.mapping(raw, "noise", _NOISE_KEYS)
    for k in ("finalists", "repeats", "confirm_rounds"):
        v = nm.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise r.fail(f"noise.{k}", f"{v!r} is not a non-negative integer")
    for k in ("min_gain", "single_run_noise"):
        if k in nm:
            r.positive(nm[k], f"noise.{k}")
    if not isinstance(nm.get("early_stop", True), bool):
        raise r.fail("noise.early_stop", f"{nm['early_stop']!r} is not true or false")
    after = nm.get("early_stop_after", 0.35)
    if isinstance(after, bool) or not isinstance(after, int | float) or not 0 < after < 1:
        raise r.fail("noise.early_stop_after",
                     f"{after!r} is not a fraction of the load window in (0, 1)")
    return Noise(**nm)


def _parse_optimizer(r: _Reader, raw: Any) -> OptimizerConfig:
    opm = r.mapping(raw, "optimizer", _OPT_KEYS)
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
    design = opm.get("initial_design", InitialDesign.LHS)
    if design not in tuple(InitialDesign):
        raise r.fail("optimizer.initial_design", f"{design!r} is not allowed; use one of "
                     f"{', '.join(InitialDesign)}")
    init = opm.get("initial_points", 4)
    seed = opm.get("seed", 0)
    for k, v in (("initial_points", init), ("seed", seed)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise r.fail(f"optimizer.{k}", f"{v!r} is not a non-negative integer")
    return OptimizerConfig(est, max(1, init), seed, acq, InitialDesign(design))


def _parse_canary(r: _Reader, raw: Any, base_dir: Path) -> CanaryConfig:
    cn = r.mapping(raw, "canary", _CANARY_KEYS)
    backend = cn.get("backend", CanaryBackend.LOCAL)
    if backend not in tuple(CanaryBackend):
        allowed = ", ".join(CanaryBackend)
        raise r.fail("canary.backend", f"{backend!r} is not allowed; use one of {allowed}")
    binds = cn.get("omp_binds", [])
    if not isinstance(binds, list):
        raise r.fail(
            "canary.omp_binds",
            "must be a list of VLLM_CPU_OMP_THREADS_BIND values, "
            "one per parallel canary (e.g. ['0', '1'])",
        )
    template = None
    if backend == CanaryBackend.KUBERNETES:
        template = _pod_template(r, cn, base_dir)
    canary = CanaryConfig(
        backend=CanaryBackend(backend),
        health_timeout=r.duration(cn.get("health_timeout", "300s"), "canary.health_timeout"),
        scrape_interval=r.duration(cn.get("scrape_interval", "1s"), "canary.scrape_interval"),
        omp_binds=tuple(str(b) for b in binds),
        pod_template=template,
        namespace=r.string(cn.get("namespace", "default"), "canary.namespace"),
        scheme=_canary_scheme(r, cn.get("scheme", "http")),
        http=parse_http_config(
            r.mapping(cn.get("http_config"), "canary.http_config",
                      dict.fromkeys(HTTP_CONFIG_KEYS, "")),
            r.fail, "canary.http_config", base_dir),
    )
    if canary.health_timeout <= 0 or canary.scrape_interval <= 0:
        raise r.fail("canary", "health_timeout and scrape_interval must be greater than 0s")
    return canary


def _canary_scheme(r: _Reader, value: Any) -> str:
    if value not in ("http", "https"):
        raise r.fail("canary.scheme", f"{value!r} is not allowed; use http or https")
    return str(value)


def _pod_template(r: _Reader, cn: Mapping[str, Any], base_dir: Path) -> Mapping[str, Any]:
    if "pod_template" not in cn:
        raise r.fail(
            "canary.pod_template",
            "is required for the kubernetes backend (a Deployment or Pod manifest file)",
        )
    tpath = Path(expand_env(r, cn["pod_template"], "canary.pod_template"))
    tpath = tpath if tpath.is_absolute() else base_dir / tpath
    try:
        template = yaml.safe_load(tpath.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise r.fail("canary.pod_template", f"cannot read {tpath}: {exc}") from None
    if not isinstance(template, Mapping):
        raise r.fail("canary.pod_template", f"{tpath} is not a manifest mapping")
    return template
