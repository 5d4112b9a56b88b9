"""``tuner tune``: Bayesian search over vLLM flags on canary servers, under a latency SLO.

The modules, in the order a search uses them:

* ``config`` (with ``parse_space``, ``parse_load``): ``tune.yaml`` -> a frozen ``TuneConfig``.
* ``space``: the knobs and the vLLM constraints checked before a launch.
* ``optimizer``: the ``skopt.Optimizer`` (imported only there) and what it is taught.
* ``planner``: the search as a pure function of the finished trials (``plan_steps``), the
  finalists, the winner and its comparison with the baseline (``summarize_search``).
* ``trial``: one trial on a fresh canary (``run_trial``), scraped through ``tuner.ingest``
  like any production target and scored with the production signals.
* ``records``: what a trial measured and how it scored (``Trial``, ``score_trial``).
* ``search``: the loop (``run_tune``), its log ``OUT/tune.db`` (``TrialLog``), resume and
  progress. ``tuner.report`` turns the outcome into trials.csv, best.json, report.md, plots.
"""

from tuner.errors import TuneError, TuneInterrupted
from tuner.tune.config import (
    Budget,
    CanaryConfig,
    Noise,
    Objective,
    ObjectiveKind,
    OptimizerConfig,
    TuneConfig,
    TuneSLO,
    load_tune_config,
    parse_tune_config,
)
from tuner.tune.optimizer import AskTell, make_optimizer, tell_history, told_history
from tuner.tune.parse_load import build_load_spec
from tuner.tune.planner import (
    Candidate,
    Comparison,
    Recommendation,
    Step,
    TuneOutcome,
    candidates,
    choose_winner,
    compare,
    finalists,
    plan_steps,
    planned_total,
    serve_args,
    summarize_search,
)
from tuner.tune.records import (
    FAILED_LOSS,
    SLO_CHECKS,
    FigureSource,
    Measurement,
    SloCheck,
    Trial,
    TrialKind,
    TrialState,
    objective_value,
    score_trial,
    slo_violations,
)
from tuner.tune.search import (
    TrialLog,
    TuneCounters,
    TuneObserver,
    TuneOptions,
    load_trials,
    prepare_out,
    run_tune,
)
from tuner.tune.space import (
    DEFAULT_KNOBS,
    KNOWN_FLAGS,
    Constraints,
    Knob,
    KnobType,
    Space,
    apply_constraints,
    point_key,
)
from tuner.tune.trial import CanaryScraper, TrialContext, run_trial, server_signals

__all__ = [
    "DEFAULT_KNOBS",
    "FAILED_LOSS",
    "KNOWN_FLAGS",
    "SLO_CHECKS",
    "AskTell",
    "Budget",
    "CanaryConfig",
    "CanaryScraper",
    "Candidate",
    "Comparison",
    "Constraints",
    "FigureSource",
    "Knob",
    "KnobType",
    "Measurement",
    "Noise",
    "Objective",
    "ObjectiveKind",
    "OptimizerConfig",
    "Recommendation",
    "SloCheck",
    "Space",
    "Step",
    "Trial",
    "TrialContext",
    "TrialKind",
    "TrialLog",
    "TrialState",
    "TuneConfig",
    "TuneCounters",
    "TuneError",
    "TuneInterrupted",
    "TuneObserver",
    "TuneOptions",
    "TuneOutcome",
    "TuneSLO",
    "apply_constraints",
    "build_load_spec",
    "candidates",
    "choose_winner",
    "compare",
    "finalists",
    "load_trials",
    "load_tune_config",
    "make_optimizer",
    "objective_value",
    "parse_tune_config",
    "plan_steps",
    "planned_total",
    "point_key",
    "prepare_out",
    "run_trial",
    "run_tune",
    "score_trial",
    "serve_args",
    "server_signals",
    "slo_violations",
    "summarize_search",
    "tell_history",
    "told_history",
]
