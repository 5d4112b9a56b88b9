"""CPU pinning for a search: the canaries on their cores, the load client (and the tuner's own
scraping, the sidecar of a search) on others, disjoint where the machine allows.

``cpus:`` in tune.yaml is ``auto`` (the default), ``off``, or ``{canary: "0-2", load: "3"}``
(Linux CPU lists). ``plan_cpus`` (pure) turns it and the CPUs this process may use
(``os.sched_getaffinity``) into a ``CpuPlan``: per parallel canary slot a set of cores (vLLM's
``VLLM_CPU_OMP_THREADS_BIND`` on the CPU build, and the canary process's affinity), and the
cores of the tuner process, which runs the load client and the scraper. With two cores: the
canary on one, the load client and the scraper on the other. When pinning is impossible
(one core, cores that are not ours, a cgroup that refuses the mask) the plan says so in
``note`` — said once — and the search goes on unpinned.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum

from tuner.errors import ConfigError


class CpuMode(StrEnum):
    """How a search pins CPUs (``cpus:`` in tune.yaml)."""

    AUTO = "auto"
    OFF = "off"
    FIXED = "fixed"


@dataclass(frozen=True)
class CpuRequest:
    """What tune.yaml asked for; ``canary``/``load`` only with ``FIXED``."""

    mode: CpuMode = CpuMode.AUTO
    canary: tuple[int, ...] = ()
    load: tuple[int, ...] = ()

    def __post_init__(self) -> None:  # "auto" and CpuMode.AUTO are the same mode
        object.__setattr__(self, "mode", CpuMode(self.mode))


@dataclass(frozen=True)
class CpuPlan:
    """Cores per parallel canary slot (``()``: unpinned) and of the tuner process."""

    canary: tuple[tuple[int, ...], ...] = ()
    load: tuple[int, ...] = ()
    note: str = ""

    def canary_cores(self, slot: int) -> tuple[int, ...]:
        return self.canary[slot % len(self.canary)] if self.canary else ()

    @property
    def pinned(self) -> bool:
        return bool(self.canary or self.load)

    def describe(self) -> str:
        """One line for people: who runs where."""
        if not self.pinned:
            return "CPU pinning off" + (f": {self.note}" if self.note else "")
        slots = "; ".join(f"canary slot {i}: {cpu_list(c)}" for i, c in enumerate(self.canary))
        text = f"CPU pinning: {slots}; load client and scraper: {cpu_list(self.load)}"
        return text + (f" ({self.note})" if self.note else "")


_LIST_RE = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")


def parse_cpu_list(text: str, where: str = "cpus") -> tuple[int, ...]:
    """``"0-2,5"`` -> ``(0, 1, 2, 5)`` (Linux CPU list syntax); ConfigError naming ``where``."""
    body = str(text).replace(" ", "")
    if not _LIST_RE.match(body):
        raise ConfigError(f"{where}: {text!r} is not a CPU list like \"0\", \"0-3\" or \"0,2-3\"")
    cores: set[int] = set()
    for part in body.split(","):
        lo, _, hi = part.partition("-")
        first, last = int(lo), int(hi or lo)
        if last < first:
            raise ConfigError(f"{where}: {part!r} is a descending range; write {last}-{first}")
        cores.update(range(first, last + 1))
    return tuple(sorted(cores))


def cpu_list(cores: Sequence[int]) -> str:
    """``(0, 1, 2, 5)`` -> ``"0-2,5"`` (the form ``VLLM_CPU_OMP_THREADS_BIND`` takes)."""
    out: list[str] = []
    ordered = sorted(set(cores))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        out.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(out)


def _split(cores: Sequence[int], parts: int) -> tuple[tuple[int, ...], ...]:
    """``cores`` in ``parts`` contiguous groups as even as possible (parts <= len(cores))."""
    size, extra = divmod(len(cores), parts)
    out, at = [], 0
    for i in range(parts):
        n = size + (1 if i < extra else 0)
        out.append(tuple(cores[at:at + n]))
        at += n
    return tuple(out)


#: ``cpus: auto`` pins with at least this many CPUs (benchmarks/tune_noise.py on a quiet 2-core
#: machine: pinned 3.0x the throughput of unpinned, 1,980 against 654 tok/s, and one server's CV
#: 1.2% against 9.8%; on the same machine shared with other sessions' work, pinning to a busy
#: core cost 0.40x: pin a machine the search has to itself, or set ``cpus: off``).
AUTO_MIN_CPUS = 2


def plan_cpus(request: CpuRequest, available: Sequence[int], parallel: int = 1) -> CpuPlan:
    """Where canaries and the load client run, given the CPUs this process may use (pure)."""
    avail = tuple(sorted(set(available)))
    parallel = max(1, parallel)
    if request.mode is CpuMode.OFF:
        return CpuPlan()
    if request.mode is CpuMode.FIXED:
        foreign = sorted(set(request.canary + request.load) - set(avail))
        if foreign:
            return CpuPlan(note=f"cpus {cpu_list(foreign)} are not available to this process "
                                f"(it may use {cpu_list(avail)}); running unpinned")
        canary, load = request.canary, request.load
    else:
        if len(avail) < AUTO_MIN_CPUS:
            return CpuPlan(note=f"only CPU {cpu_list(avail)} is available to this process: "
                                "the canary and the load client share it; running unpinned")
        n_load = 1 if len(avail) <= 8 else len(avail) // 8
        canary, load = avail[:-n_load], avail[-n_load:]
    note = ""
    if len(canary) >= parallel:
        slots = _split(canary, parallel)
    else:
        slots = tuple((canary[i % len(canary)],) for i in range(parallel))
        note = (f"{parallel} parallel canaries share {len(canary)} canary core(s), so their "
                "measurements disturb each other")
    return CpuPlan(canary=slots, load=tuple(load), note=note)


def current_cpus() -> tuple[int, ...]:
    """The CPUs this process may run on."""
    return tuple(sorted(os.sched_getaffinity(0)))


def _threads() -> list[int]:
    try:
        return [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        return [0]


def set_process_cpus(cores: Sequence[int]) -> str:
    """Pin every thread of this process to ``cores``; "" on success, else why not."""
    try:
        for tid in _threads():
            with contextlib.suppress(ProcessLookupError):  # a thread that just ended
                os.sched_setaffinity(tid, set(cores))
    except OSError as exc:
        return f"cannot pin this process to CPUs {cpu_list(cores)}: {exc.strerror or exc}"
    return ""


@contextlib.contextmanager
def pinned_process(cores: Sequence[int]) -> Iterator[str]:
    """Run the body with this process pinned to ``cores`` (nothing when empty); yields "" or
    why pinning failed; the previous mask is restored afterwards."""
    if not cores:
        yield ""
        return
    previous = current_cpus()
    error = set_process_cpus(cores)
    try:
        yield error
    finally:
        if not error:
            set_process_cpus(previous)


def child_affinity(cores: Sequence[int]) -> None:
    """For ``subprocess.Popen(preexec_fn=...)``: pin the child before it runs the server.

    A refusal (a cgroup that forbids the mask) leaves the child unpinned; the search has
    already said so when it probed the plan (``probe_plan``).
    """
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, set(cores))


def probe_plan(plan: CpuPlan) -> CpuPlan:
    """The plan, or an unpinned one with the reason when this machine refuses its masks.

    Tries each mask on this process's thread and puts the old mask back.
    """
    if not plan.pinned:
        return plan
    previous = os.sched_getaffinity(0)
    try:
        for cores in (*plan.canary, plan.load):
            if cores:
                os.sched_setaffinity(0, set(cores))
    except OSError as exc:
        return CpuPlan(note=f"this machine refuses CPU masks ({exc.strerror or exc}; a cgroup "
                            "cpuset may forbid them); running unpinned")
    finally:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, previous)
    return plan
