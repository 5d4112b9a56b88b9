"""The sidecar daemon: scrape on a schedule into the store, evaluate rules, serve its endpoints.

``service`` is the scrape loop, the HTTP endpoints and the process lifecycle; ``alerting`` the
rule-evaluation job; ``tuning`` the scheduled tuning window; ``triggers`` the cron triggers.
"""

from tuner.daemon.alerting import Alerting
from tuner.daemon.service import Daemon, DaemonMetrics, run_daemon
from tuner.daemon.triggers import cron_trigger, suggest_trigger
from tuner.daemon.tuning import TuningWindow

__all__ = ["Alerting", "Daemon", "DaemonMetrics", "TuningWindow", "cron_trigger", "run_daemon",
           "suggest_trigger"]
