"""CPU pinning of a search (tuner.tune.cpus): the plan is pure; applying it is tried on this
process and, for the one-core case, in a subprocess whose affinity is one CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tuner.errors import ConfigError
from tuner.tune.cpus import (
    CpuMode,
    CpuPlan,
    CpuRequest,
    cpu_list,
    parse_cpu_list,
    pinned_process,
    plan_cpus,
    probe_plan,
)

AUTO = CpuRequest()


def test_cpu_lists_both_ways() -> None:
    assert parse_cpu_list("0-2,5") == (0, 1, 2, 5)
    assert parse_cpu_list("3") == (3,)
    assert parse_cpu_list(" 1, 0 ") == (0, 1)
    assert cpu_list((5, 0, 1, 2)) == "0-2,5"
    assert cpu_list((0, 2)) == "0,2"


@pytest.mark.parametrize(("text", "message"), [
    ("a", "is not a CPU list"), ("0-", "is not a CPU list"), ("", "is not a CPU list"),
    ("3-1", "descending range"),
])
def test_bad_cpu_lists_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_cpu_list(text, "cpus.canary")


def test_two_cores_canary_on_one_load_client_on_the_other() -> None:
    plan = plan_cpus(AUTO, (0, 1))
    assert plan.pinned and plan.canary == ((0,),) and plan.load == (1,) and plan.note == ""
    assert "canary slot 0: 0; load client and scraper: 1" in plan.describe()


def test_four_cores_canary_on_three_load_client_on_the_other() -> None:
    plan = plan_cpus(AUTO, (0, 1, 2, 3))
    assert plan.canary == ((0, 1, 2),) and plan.load == (3,) and plan.note == ""
    assert plan.canary_cores(0) == (0, 1, 2)
    assert "load client and scraper: 3" in plan.describe()


def test_many_cores_are_split_between_parallel_canaries() -> None:
    plan = plan_cpus(AUTO, range(16), parallel=2)
    assert plan.load == (14, 15)
    assert plan.canary == (tuple(range(7)), tuple(range(7, 14)))
    assert not set(plan.load) & {c for s in plan.canary for c in s}


def test_one_core_is_said_and_unpinned() -> None:
    plan = plan_cpus(AUTO, (3,))
    assert not plan.pinned and plan.canary_cores(0) == ()
    assert "only CPU 3 is available" in plan.note and "unpinned" in plan.note


def test_more_parallel_canaries_than_cores_share_and_say_so() -> None:
    plan = plan_cpus(AUTO, (0, 1, 2, 3), parallel=4)
    assert plan.canary == ((0,), (1,), (2,), (0,)) and plan.load == (3,)
    assert "share 3 canary core(s)" in plan.note


def test_fixed_and_off() -> None:
    fixed = CpuRequest(CpuMode.FIXED, canary=(1,), load=(0,))
    assert plan_cpus(fixed, (0, 1)) == CpuPlan(canary=((1,),), load=(0,))
    foreign = plan_cpus(CpuRequest(CpuMode.FIXED, canary=(7,), load=(0,)), (0, 1))
    assert not foreign.pinned and "cpus 7 are not available" in foreign.note
    assert plan_cpus(CpuRequest(CpuMode.OFF), (0, 1)) == CpuPlan()


def test_pinning_this_process_is_restored() -> None:
    before = os.sched_getaffinity(0)
    target = {min(before)}
    with pinned_process(tuple(target)) as error:
        assert error == ""
        assert os.sched_getaffinity(0) == target
    assert os.sched_getaffinity(0) == before
    assert probe_plan(CpuPlan(canary=((min(before),),), load=(min(before),))).pinned


def test_a_one_core_affinity_mask_runs_unpinned_with_one_note() -> None:
    """A process restricted to one CPU (os.sched_setaffinity in a subprocess) plans no pinning,
    says why once, and a mask it may not use is refused by the probe, not by a crash."""
    script = textwrap.dedent("""
        import json, os
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        from tuner.tune.cpus import CpuPlan, CpuRequest, current_cpus, plan_cpus, probe_plan
        plan = plan_cpus(CpuRequest(), current_cpus())
        other = max(os.cpu_count() or 1, 2) + 64  # a CPU that does not exist here
        probed = probe_plan(CpuPlan(canary=((other,),), load=(other,)))
        print(json.dumps({"pinned": plan.pinned, "note": plan.note,
                          "probed": probed.pinned, "probe_note": probed.note}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    got = json.loads(out.stdout)
    assert got["pinned"] is False and "is available to this process" in got["note"]
    assert got["probed"] is False and "refuses CPU masks" in got["probe_note"]


# ----------------------------------------------------------------------------- tune.yaml

BASE: dict[str, object] = {
    "launch": {"model": "/models/tiny"},
    "load": {"prompt_tokens": 64, "output_tokens": 16, "concurrency": 2, "duration": 5},
}


def _cfg(cpus: object) -> object:
    from tuner.tune import parse_tune_config

    return parse_tune_config({**BASE, "cpus": cpus}, "/etc/tune.yaml")


def test_cpus_in_tune_yaml() -> None:
    from tuner.tune import parse_tune_config

    assert parse_tune_config(dict(BASE), "/etc/tune.yaml").cpus == CpuRequest()  # auto
    assert _cfg("auto").cpus == CpuRequest(CpuMode.AUTO)  # type: ignore[attr-defined]
    assert _cfg(False).cpus == CpuRequest(CpuMode.OFF)  # type: ignore[attr-defined]
    assert _cfg("off").cpus == CpuRequest(CpuMode.OFF)  # type: ignore[attr-defined]
    assert _cfg({"canary": "0-2", "load": 3}).cpus == CpuRequest(  # type: ignore[attr-defined]
        CpuMode.FIXED, (0, 1, 2), (3,))


@pytest.mark.parametrize(("cpus", "message"), [
    ("sometimes", r"cpus: 'sometimes' is not allowed; use auto, off"),
    ({"canary": "0"}, r"cpus\.load: is required"),
    ({"canary": "0-1", "load": "1"}, r"share CPU\(s\) \[1\]; they must be disjoint"),
    ({"canary": "x", "load": "1"}, r"cpus\.canary: .*is not a CPU list"),
    ({"canary": "0", "load": "1", "sidecar": "1"}, r"sidecar"),
])
def test_bad_cpus_name_the_key(cpus: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        _cfg(cpus)
    assert "/etc/tune.yaml" in str(err.value)


def test_canary_gets_its_cores_as_omp_binding_and_affinity(tmp_path: object) -> None:
    import threading
    from pathlib import Path

    from tuner.load import LengthDist, LoadSpec
    from tuner.scrape import make_client
    from tuner.store import Store
    from tuner.tune import TrialContext
    from tuner.tune.trial import canary_for

    cfg = _cfg("auto")
    root = Path(str(tmp_path))
    store = Store(root / "s.db")
    client = make_client(max_connections=1)
    spec = LoadSpec(prompt_tokens=LengthDist("fixed", mean=8),
                    output_tokens=LengthDist("fixed", mean=4), concurrency=1)
    plan = CpuPlan(canary=((0,), (1, 2)), load=(3,))
    ctx = TrialContext(cfg, store, root, client, spec, threading.Event(), plan)  # type: ignore[arg-type]
    c0, c1 = canary_for(ctx, 1, {}, 0), canary_for(ctx, 2, {}, 1)
    assert c0.spec.cpus == (0,) and c0.spec.env["VLLM_CPU_OMP_THREADS_BIND"] == "0"  # type: ignore[attr-defined]
    assert c1.spec.cpus == (1, 2) and c1.spec.env["VLLM_CPU_OMP_THREADS_BIND"] == "1-2"  # type: ignore[attr-defined]
    unpinned = TrialContext(cfg, store, root, client, spec, threading.Event())  # type: ignore[arg-type]
    c = canary_for(unpinned, 3, {}, 0)
    assert c.spec.cpus == () and "VLLM_CPU_OMP_THREADS_BIND" not in c.spec.env  # type: ignore[attr-defined]
    client.close()
    store.close()


def test_local_canary_runs_pinned(tmp_path: object) -> None:
    """A real child process started by LocalCanary's launcher reports the affinity it got."""
    from pathlib import Path

    from tuner.canary import LaunchSpec
    from tuner.canary.local import _pin_child

    cpu = min(os.sched_getaffinity(0))
    out = Path(str(tmp_path)) / "mask"
    subprocess.run([sys.executable, "-c",
                    f"import os; open({str(out)!r}, 'w').write(str(sorted(os.sched_getaffinity(0))))"],
                   preexec_fn=_pin_child((cpu,)), check=True)
    assert out.read_text() == f"[{cpu}]"
    assert LaunchSpec(cpus=(cpu,)).cpus == (cpu,)
