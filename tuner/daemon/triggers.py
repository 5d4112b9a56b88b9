"""APScheduler triggers for the daemon's scheduled jobs (cron expressions in the config)."""

from __future__ import annotations

import datetime
from typing import Any

from apscheduler.triggers.cron import CronTrigger

from tuner.config import Config
from tuner.errors import ConfigError


def cron_trigger(config: Config, key: str, expr: str) -> Any:
    """The APScheduler CronTrigger of a 5-field cron ``expr`` (UTC); ConfigError if invalid."""
    try:
        return CronTrigger.from_crontab(expr, timezone="UTC")
    except ValueError as exc:
        raise ConfigError(
            f"{config.source or '<config>'}: {key}: {expr!r} is not a valid cron expression ({exc})"
        ) from None


def suggest_trigger(config: Config) -> Any:
    """The CronTrigger of ``suggest.schedule``."""
    return cron_trigger(config, "suggest.schedule", str(config.suggest.schedule))


def now_dt() -> Any:
    """Now, as the aware datetime APScheduler wants for ``next_run_time``."""
    return datetime.datetime.now(datetime.UTC)
