"""The dashboard of the tuner sidecar itself: targets, scrapes, the store, errors, alerts and
tuning runs."""

from __future__ import annotations

from tuner.dashboards.model import (
    ALERT_ACTIVE,
    DATASOURCE_VAR,
    RI,
    TUNE_RUN,
    Dashboard,
    Panel,
    PanelKind,
    Query,
    Row,
    query_variable,
)


def tuner_self() -> Dashboard:
    T = 'instance=~"$instance"'
    return Dashboard(
        uid="tuner-sidecar",
        title="tuner sidecar",
        filename="tuner.json",
        variables=(
            DATASOURCE_VAR,
            query_variable("instance", "tuner instance", "label_values(tuner_target_up, instance)"),
            query_variable(
                "target",
                "Scrape target",
                'label_values(tuner_target_up{instance=~"$instance"}, target)',
            ),
        ),
        rows=(
            Row(
                "Scraping",
                (
                    Panel(
                        "Targets up (sidecar)",
                        (
                            Query(
                                f'max by (target) (tuner_target_up{{{T}, target=~"$target"}})',
                                "{{target}}",
                            ),
                        ),
                        max=1,
                        description="1 when the sidecar's last scrape of the target succeeded.",
                    ),
                    Panel(
                        "Scrape duration p90",
                        (
                            Query(
                                f"histogram_quantile(0.9, sum by (target, le) (rate("
                                "tuner_scrape_duration_seconds_bucket"
                                f'{{{T}, target=~"$target"}}[{RI}])))',
                                "{{target}}",
                            ),
                        ),
                        unit="s",
                        description="Time to fetch, parse and store one scrape, per target.",
                    ),
                    Panel(
                        "Samples stored per second",
                        (
                            Query(
                                f"sum(rate(tuner_samples_stored_total{{{T}}}[{RI}]))", "samples/s"
                            ),
                        ),
                    ),
                    Panel(
                        "Store size",
                        (Query(f"max by (instance) (tuner_store_bytes{{{T}}})", "{{instance}}"),),
                        unit="bytes",
                    ),
                    Panel(
                        "Errors per second",
                        (
                            Query(
                                f"sum by (kind, target) (rate(tuner_errors_total{{{T}}}[{RI}])) "
                                "or on() "
                                f"(0 * sum(rate(tuner_samples_stored_total{{{T}}}[{RI}])))",
                                "{{kind}} {{target}}",
                            ),
                        ),
                        description="Scrape, store, rule and delivery errors by kind (0 while the "
                        "sidecar runs without errors).",
                    ),
                    Panel(
                        "Prometheus scrape health",
                        (Query('up{job=~"vllm|dcgm|tuner"}', "{{job}} {{instance}}"),),
                        max=1,
                        description="Prometheus's own up{} for the jobs tuner provisions.",
                    ),
                ),
            ),
            Row(
                "Alerts",
                (
                    Panel(
                        "Alerts pending and firing",
                        (
                            Query(
                                f"count by (alertstate) (tuner_alerts{{{T}}}) or on() "
                                f"(0 * max(tuner_store_bytes{{{T}}}))",
                                "{{alertstate}}",
                            ),
                        ),
                        description="Number of alerts in each state in the sidecar's rule engine "
                        "(0 while nothing is pending or firing).",
                    ),
                    Panel(
                        "Active alerts",
                        (
                            Query(
                                f"max by (alertname, alertstate, severity) (tuner_alerts{{{T}}})",
                                "{{alertname}} {{alertstate}}",
                                instant=True,
                            ),
                        ),
                        kind=PanelKind.TABLE,
                        requires=ALERT_ACTIVE,
                    ),
                ),
            ),
            Row(
                "Tuning",
                (
                    Panel(
                        "Trials by state",
                        (Query(f"sum by (state) (tuner_tune_trials_total{{{T}}})", "{{state}}"),),
                        requires=TUNE_RUN,
                    ),
                    Panel(
                        "Best objective so far",
                        (Query(f"max by (instance) (tuner_tune_best_objective{{{T}}})", "best"),),
                        requires=TUNE_RUN,
                        min=None,
                    ),
                ),
            ),
        ),
    )
