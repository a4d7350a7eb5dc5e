#!/usr/bin/env python3
"""Generates the Grafana dashboards in dashboards/*.json (committed; never edited by hand) with
Grafana's own grafana-foundation-sdk, which builds the panels, their options and the grid layout.

  python3 manifests/grafana/dashboards.py          # rewrite the JSON files
  python3 manifests/grafana/dashboards.py --check  # exit 1 when a committed file is stale

The SDK is pinned in e2e/tools and installed into a cached venv; this script re-runs itself with that
venv's python when the SDK is not importable. e2e/checks/helm runs --check, parses every expression
with promtool and checks every metric and label name against the Rust sources
(e2e/promql_names.py), and every legend against the labels its query keeps.

Label conventions: operator metrics (tiketi_operator_*, ServiceMonitor with honorLabels) carry the
event's `namespace` and `event` (the TicketingEvent's name) and, per component, `component`; only the
leader exports per-event gauges (max over replicas is the leader's). Service metrics
(tiketi_queue_*, tiketi_reservation_*, the chart's PodMonitor) carry the pod's `namespace` and the
target labels `tiketi_event` (the TicketingEvent's name) and `tiketi_component`.
"""

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = pathlib.Path(__file__).resolve().parent / "dashboards"

try:
    from grafana_foundation_sdk.builders import common as cb
    from grafana_foundation_sdk.builders import dashboard as db
    from grafana_foundation_sdk.builders import prometheus as pb
    from grafana_foundation_sdk.builders import stat, statetimeline, table, timeseries
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models import common as cm
    from grafana_foundation_sdk.models import dashboard as dm
    from grafana_foundation_sdk.models import prometheus as pm
except ImportError:
    if os.environ.get("TIKETI_DASHBOARDS_REEXEC"):
        sys.exit("dashboards.py: grafana_foundation_sdk is not importable even in the e2e/tools venv")
    python = subprocess.run([str(ROOT / "e2e/tools"), "grafana"], check=True, capture_output=True,
                            text=True).stdout.strip()
    os.environ["TIKETI_DASHBOARDS_REEXEC"] = "1"
    os.execv(python, [python, __file__, *sys.argv[1:]])

DS = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")

# Selectors of the dashboard variables.
OP = 'namespace=~"$namespace", event=~"$event"'          # operator series of the chosen events
SVC = 'namespace=~"$namespace", tiketi_event=~"$event"'  # service series of the chosen events
COMPONENTS = ("queue", "reservation")
# The autoscaler's signal each component is sized on in the shipped examples; the overlay shows
# both operator signal gauges on the right axis.
SIGNALS = (("tiketi_operator_queue_depth", "waiting"), ("tiketi_operator_active_users", "active"))


# === building blocks ===

def in_range(counter: str, selector: str) -> str:
    """How much `counter` grew over the dashboard's time range, counting series born inside it.

    A counter series appears at its first value (a scaling decision's counter at 1), and
    increase() takes a series' first sample as its baseline: a change made once in the range would
    count 0. Series that did not exist at the start of the range count their whole value.
    """
    return (f"(({counter}{{{selector}}} unless {counter}{{{selector}}} offset $__range)"
            f" or increase({counter}{{{selector}}}[$__range]))")


def q(expr, legend="", ref=None, instant=False):
    b = pb.Dataquery().expr(expr).legend_format(legend).datasource(DS)
    if ref:
        b = b.ref_id(ref)
    if instant:
        b = b.instant().format(pm.PromQueryFormat.TABLE)
    else:
        b = b.range()
    return b


def with_targets(panel, targets):
    for i, t in enumerate(targets):
        panel = panel.with_target(t.ref_id(chr(ord("A") + i)))
    return panel


def ts(title, description, targets, unit="short", w=12, h=8, bars=False, stacked=False):
    p = (timeseries.Panel().title(title).description(description).datasource(DS).unit(unit)
         .span(w).height(h).line_width(1).fill_opacity(10).show_points(cm.VisibilityMode.NEVER)
         .legend(cb.VizLegendOptions().display_mode(cm.LegendDisplayMode.TABLE)
                 .placement(cm.LegendPlacement.RIGHT).show_legend(True).calcs(["lastNotNull", "max"]))
         .tooltip(cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI).sort(cm.SortOrder.DESCENDING)))
    if bars:
        p = p.draw_style(cm.GraphDrawStyle.BARS).fill_opacity(60)
    if stacked:
        p = p.stacking(cb.StackingConfig().mode(cm.StackingMode.NORMAL)).fill_opacity(40)
    return with_targets(p, targets)


def instant_table(title, description, expr, hide=("Time",), w=12, h=8):
    organize = dm.DataTransformerConfig(id_val="organize",
                                        options={"excludeByName": {name: True for name in hide}})
    p = (table.Panel().title(title).description(description).datasource(DS).span(w).height(h)
         .with_transformation(organize))
    return with_targets(p, [q(expr, instant=True)])


def variables(board, metric, event_label, matchers=""):
    """Datasource, namespace and event pickers; `matchers` narrows the metric the values come from."""
    ns_sel = f"{metric}{{{matchers}}}" if matchers else metric
    ev_sel = f'{metric}{{{matchers + ", " if matchers else ""}namespace=~"$namespace"}}'
    board = board.with_variable(db.DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
    for name, label, query in (("namespace", "Namespace", f"label_values({ns_sel}, namespace)"),
                               ("event", "Event", f"label_values({ev_sel}, {event_label})")):
        board = board.with_variable(
            db.QueryVariable(name).label(label).datasource(DS).query(query)
            .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED).sort(dm.VariableSort.ALPHABETICAL_ASC)
            .multi(True).include_all(True).all_value(".*"))
    return board


def dashboard(uid, title, description):
    return (db.Dashboard(title).uid(uid).description(description).tags(["tiketi"]).editable()
            .tooltip(dm.DashboardCursorSync.CROSSHAIR).refresh("10s").time("now-1h", "now").timezone("")
            .link(db.DashboardLink("tiketi").type(dm.DashboardLinkType.DASHBOARDS).tags(["tiketi"])
                  .as_dropdown(True)))


# === operator: the sale as the operator drives it ===

def operator_dashboard():
    b = dashboard(
        "tiketi-operator", "tiketi / Operator and events",
        "A sale as the operator drives it: phase, seats, admissions against the configured rate, per "
        "component the signal against need, desired and ready replicas, every autoscaler decision with "
        "its reason (holds: why it does not scale), signal health and errors, the autoscaler's tick, p95 "
        "latency per service, and the operator's own health.")
    b = variables(b, "tiketi_operator_event_phase", "event")

    b = b.with_row(db.Row("Sale"))
    b = b.with_panel(instant_table(
        "Phase per event",
        "The schedule phase of each TicketingEvent (Scheduled, PreWarming, OnSale, SoldOut, Closing, "
        "Closed, Failed). kubectl get tev shows the same with Ready and Signals.",
        f"max by (namespace, event, phase) (tiketi_operator_event_phase{{{OP}}}) == 1",
        hide=("Time", "Value"), w=6))
    b = b.with_panel(ts(
        "Seats: sold, held, available",
        "Seats by status as the reservation service last computed them (its replicas agree: max).",
        [q(f"max by (tiketi_event, status) (tiketi_reservation_seats{{{SVC}}})", "{{tiketi_event}} {{status}}")],
        w=9, stacked=True))
    b = b.with_panel(ts(
        "Admissions per second vs configured rate",
        "Users moved from the queue to the active set per second, against spec.queue.admission."
        "ratePerSecond in force. Below the rate while users wait: maxActive is reached (see active users) "
        "or admission has stalled (alert TiketiQueueNotDraining).",
        [q(f"sum by (tiketi_event) (rate(tiketi_queue_admissions_total{{{SVC}}}[$__rate_interval]))",
           "{{tiketi_event}} admitted/s"),
         q(f"max by (event) (tiketi_operator_admission_rate_per_second{{{OP}}})", "{{event}} configured rate")],
        unit="ops", w=9).override_by_regexp(
            ".*configured.*", [dm.DynamicConfigValue(id_val="custom.lineStyle",
                                                     value={"fill": "dash", "dash": [10, 10]})]))

    b = b.with_row(db.Row("Capacity: signal vs need vs desired vs ready"))
    for c in COMPONENTS:
        sel = f'{OP}, component="{c}"'
        targets = [q(f"max by (event) ({m}{{{OP}}})", f"{{{{event}}}} {what}") for m, what in SIGNALS]
        targets += [
            q(f"max by (event) (tiketi_operator_needed_replicas{{{sel}}})", "{{event}} need"),
            q(f"max by (event) (tiketi_operator_desired_replicas{{{sel}}})", "{{event}} desired"),
            q(f"max by (event) (tiketi_operator_ready_replicas{{{sel}}})", "{{event}} ready"),
        ]
        b = b.with_panel(ts(
            f"{c}: users vs need vs desired vs ready replicas",
            f"Right axis: users waiting and admitted, as the autoscaler last read them from Redis. Left "
            f"axis, {c} replicas: the capacity need (signal × (1 + headroom) / perReplica; only with "
            f"scaling.capacity), what the operator asks for (schedule floor or autoscaler decision) and "
            f"the ready pods. Desired above need: the pre-warm floor or the scale-in window holding; "
            f"a lasting gap between desired and ready: pods cannot start (alert "
            f"TiketiReplicasBelowDesired). kubectl get tev -o wide shows desired and ready per component.",
            targets, h=9)
            .override_by_regexp(".* (waiting|active)$", [
                dm.DynamicConfigValue(id_val="custom.axisPlacement", value="right"),
                dm.DynamicConfigValue(id_val="custom.fillOpacity", value=0)])
            .override_by_regexp(".* desired$", [
                dm.DynamicConfigValue(id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]}),
                dm.DynamicConfigValue(id_val="custom.lineWidth", value=2)]))

    b = b.with_row(db.Row("Decisions: why it scales, why it holds"))
    b = b.with_panel(ts(
        "Autoscaler decisions by reason (holds included)",
        "Every decision of the autoscaler per interval, by component, direction (up, down, hold) and "
        "reason: StepAbove, CapacityNeed, FloorRaised, StaleFallback move replicas; ScaleOutCooldown, "
        "AtMaxReplicas, Stabilizing, ScaleInCooldown, AtFloor, QueueNotEmpty, SignalsUnhealthy and "
        "WithinThresholds are why it holds. kubectl get tev -o wide shows the last applied reason per "
        "component, kubectl describe tev the last 20 changes (status.recentDecisions).",
        [q(f"sum by (component, direction, reason) (increase(tiketi_operator_autoscaler_decisions_total"
           f"{{{OP}}}[$__rate_interval])) > 0", "{{component}} {{direction}}: {{reason}}")],
        w=12, bars=True, stacked=True))
    b = b.with_panel(instant_table(
        "Why it is not scaling: holds in the time range",
        "Decisions that kept the replicas where they were, by component and reason, over the dashboard's "
        "time range.",
        "sort_desc(sum by (event, component, reason) ("
        + in_range("tiketi_operator_autoscaler_decisions_total", OP + ', direction="hold"')
        + ") > 0)",
        w=6))
    b = b.with_panel(instant_table(
        "Replica changes applied in the time range",
        "Changes written to the Deployments, by component, direction and kind (schedule, closed, "
        "scaleOut, scaleIn, fallback, maxLowered).",
        "sum by (event, component, direction, reason) ("
        + in_range("tiketi_operator_scaling_decisions_total", OP)
        + ") > 0",
        w=6))

    b = b.with_row(db.Row("Signals and the autoscaler loop"))
    b = b.with_panel(
        with_targets(
            statetimeline.Panel().title("Signal health per event")
            .description("1 while every signal the event's policies use is fresh (condition SignalsHealthy; "
                         "kubectl get tev shows it as SIGNALS). Unhealthy: no scale-in, and after "
                         "fallback.afterStale the fallback replicas (alert TiketiSignalsUnhealthy).")
            .datasource(DS).span(8).height(8).show_value(cm.VisibilityMode.NEVER)
            .mappings([dm.ValueMap(options={
                "0": dm.ValueMappingResult(text="unhealthy", color="red", index=0),
                "1": dm.ValueMappingResult(text="healthy", color="green", index=1)})]),
            [q(f"min by (event) (tiketi_operator_signals_healthy{{{OP}}})", "{{event}}")]))
    b = b.with_panel(ts(
        "Signal errors by signal and reason",
        "Failed signal reads per second (Redis pipeline or Prometheus query), for every event the "
        "operator reads (not filtered by the event variable: one read serves many events).",
        [q("sum by (signal, reason) (rate(tiketi_operator_signal_errors_total[$__rate_interval]))",
           "{{signal}}: {{reason}}")], unit="ops", w=8))
    b = b.with_panel(ts(
        "Autoscaler tick duration",
        "One tick: read every due event's signals, decide, apply. Compare with the poll interval (2 s by "
        "default); the right axis is the number of events the last tick looked at.",
        [q("histogram_quantile(0.5, sum by (le) (rate(tiketi_operator_autoscaler_tick_duration_seconds_bucket"
           "[$__rate_interval])))", "p50"),
         q("histogram_quantile(0.99, sum by (le) (rate(tiketi_operator_autoscaler_tick_duration_seconds_bucket"
           "[$__rate_interval])))", "p99"),
         q("max(tiketi_operator_autoscaler_events)", "events")],
        unit="s", w=8).override_by_name("events", [
            dm.DynamicConfigValue(id_val="custom.axisPlacement", value="right"),
            dm.DynamicConfigValue(id_val="unit", value="short")]))

    b = b.with_row(db.Row("Services"))
    b = b.with_panel(ts(
        "p95 latency per service",
        "95th percentile of the API request latency of each event's queue and reservation service "
        "(probes and /metrics not counted).",
        [q(f"histogram_quantile(0.95, sum by (le, tiketi_event) (rate("
           f"tiketi_{c}_http_request_duration_seconds_bucket{{{SVC}}}[$__rate_interval])))",
           f"{{{{tiketi_event}}}} {c}") for c in COMPONENTS],
        unit="s", w=12))
    b = b.with_panel(ts(
        "Redis errors seen by the services",
        "Failed Redis calls of the queue (by reason) and reservation services. The autoscaler reads its "
        "signals from the same Redis: compare with the signal errors above.",
        [q(f"sum by (tiketi_event, reason) (rate(tiketi_queue_redis_errors_total{{{SVC}}}[$__rate_interval]))",
           "{{tiketi_event}} queue: {{reason}}"),
         q(f'sum by (tiketi_event) (rate(tiketi_reservation_dependency_errors_total{{{SVC}, dependency="redis"}}'
           f"[$__rate_interval]))", "{{tiketi_event}} reservation")],
        unit="ops", w=12))

    b = b.with_row(db.Row("Operator health"))
    b = b.with_panel(ts(
        "Reconcile duration",
        "Time one reconciliation of a TicketingEvent takes (gather, validate, build, apply, status).",
        [q("histogram_quantile(0.5, sum by (le) (rate(tiketi_operator_reconcile_duration_seconds_bucket"
           "[$__rate_interval])))", "p50"),
         q("histogram_quantile(0.99, sum by (le) (rate(tiketi_operator_reconcile_duration_seconds_bucket"
           "[$__rate_interval])))", "p99")],
        unit="s", w=8))
    b = b.with_panel(ts(
        "Reconciliations and errors",
        "Reconciliations per second, and failed ones by error kind (each is also a Warning Event on the "
        "TicketingEvent; alert TiketiReconcileErrors).",
        [q("sum(rate(tiketi_operator_reconciliations_total[$__rate_interval]))", "reconciliations"),
         q("sum by (error) (rate(tiketi_operator_reconcile_errors_total[$__rate_interval]))", "error: {{error}}")],
        unit="ops", w=8))
    b = b.with_panel(ts(
        "API requests by method and resource",
        "Calls the operator sends to the Kubernetes API server (watches and the Lease left out).",
        [q("sum by (method, resource) (rate(tiketi_operator_api_requests_total[$__rate_interval]))",
           "{{method}} {{resource}}")],
        unit="reqps", w=5))
    b = b.with_panel(with_targets(
        stat.Panel().title("Leaders")
        .description("Operator replicas holding the leader Lease: 1 is healthy, 0 means nobody writes "
                     "(alert TiketiOperatorNoLeader).")
        .datasource(DS).span(3).height(8).color_mode(cm.BigValueColorMode.BACKGROUND)
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]))
        .thresholds(db.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE).steps([
            dm.Threshold(value=None, color="red"), dm.Threshold(value=1, color="green"),
            dm.Threshold(value=2, color="red")])),
        [q("sum(tiketi_operator_leader)", "leaders")]))
    return b.build()


# === services: queue and reservation ===

def services_dashboard():
    b = dashboard(
        "tiketi-services", "tiketi / Queue and reservation services",
        "Joins and admissions of the waiting room; holds, confirms and conflicts of the reservation "
        "service; latency p50/p95/p99 and 5xx ratio of both.")
    b = variables(b, "up", "tiketi_event", 'tiketi_component!=""')

    b = b.with_row(db.Row("Waiting room (queue)"))
    b = b.with_panel(ts(
        "Joins by result",
        "Join requests per second by outcome (new, repeat, prequeue, admitted, sold_out, closed).",
        [q(f"sum by (result) (rate(tiketi_queue_joins_total{{{SVC}}}[$__rate_interval]))", "{{result}}")],
        unit="reqps", w=8))
    b = b.with_panel(ts(
        "Admissions per second",
        "Users moved from the queue to the active set per second (bounded by admission.ratePerSecond and "
        "maxActive).",
        [q(f"sum by (tiketi_event) (rate(tiketi_queue_admissions_total{{{SVC}}}[$__rate_interval]))",
           "{{tiketi_event}}")],
        unit="ops", w=8))
    b = b.with_panel(ts(
        "Queue depth and active users (service view)",
        "What the queue replicas last saw in Redis (they agree: max).",
        [q(f"max by (tiketi_event) (tiketi_queue_depth{{{SVC}}})", "{{tiketi_event}} waiting"),
         q(f"max by (tiketi_event) (tiketi_queue_prequeue_depth{{{SVC}}})", "{{tiketi_event}} pre-queue"),
         q(f"max by (tiketi_event) (tiketi_queue_active_users{{{SVC}}})", "{{tiketi_event}} active")],
        w=8))
    b = b.with_panel(ts(
        "Open SSE streams and refusals",
        "Open server-sent-event streams; 429s by scope; Redis errors by kind; users dropped for missing "
        "heartbeats.",
        [q(f"sum(tiketi_queue_sse_streams{{{SVC}}})", "open streams"),
         q(f"sum by (reason) (rate(tiketi_queue_rate_limited_total{{{SVC}}}[$__rate_interval]))", "429 {{reason}}"),
         q(f"sum by (reason) (rate(tiketi_queue_redis_errors_total{{{SVC}}}[$__rate_interval]))",
           "redis error {{reason}}"),
         q(f"sum by (tiketi_event) (rate(tiketi_queue_dropped_total{{{SVC}}}[$__rate_interval]))",
           "dropped {{tiketi_event}}")],
        w=12))
    b = b.with_panel(latency_panel("queue", w=12))

    b = b.with_row(db.Row("Reservation"))
    for title, metric, by, desc in (
        ("Holds by outcome", "holds", "outcome",
         "Hold requests per second: held, conflict (seat taken), not_admitted, unauthenticated, unavailable, "
         "invalid."),
        ("Confirms by outcome", "confirms", "outcome",
         "Confirm requests per second: confirmed, replayed (Idempotency-Key), conflict, refused, "
         "unavailable, invalid."),
    ):
        b = b.with_panel(ts(title, desc, [q(
            f"sum by ({by}) (rate(tiketi_reservation_{metric}_total{{{SVC}}}[$__rate_interval]))", f"{{{{{by}}}}}")],
            unit="reqps", w=8))
    b = b.with_panel(ts(
        "Conflicts and releases",
        "Seats found taken at hold (Redis lock) or at confirm (PostgreSQL unique constraint), and hold "
        "releases.",
        [q(f"sum by (stage) (rate(tiketi_reservation_conflicts_total{{{SVC}}}[$__rate_interval]))",
           "conflict at {{stage}}"),
         q(f"sum by (outcome) (rate(tiketi_reservation_releases_total{{{SVC}}}[$__rate_interval]))",
           "release {{outcome}}")],
        unit="ops", w=8))
    b = b.with_panel(ts(
        "Seats",
        "Seats by status (sold, held, available) as last computed (the replicas agree: max).",
        [q(f"max by (tiketi_event, status) (tiketi_reservation_seats{{{SVC}}})", "{{tiketi_event}} {{status}}")],
        w=8, stacked=True))
    b = b.with_panel(latency_panel("reservation", w=8))
    b = b.with_panel(ts(
        "Database pool and dependency errors",
        "PostgreSQL pool connections (writer and reader pools) and failed Redis/PostgreSQL calls.",
        [q(f"sum by (pool, state) (tiketi_reservation_db_pool_connections{{{SVC}}})", "{{pool}} {{state}}"),
         q(f"sum by (dependency) (rate(tiketi_reservation_dependency_errors_total{{{SVC}}}[$__rate_interval]))",
           "errors {{dependency}}")],
        w=8))

    b = b.with_row(db.Row("Errors"))
    b = b.with_panel(ts(
        "5xx ratio",
        "Share of API requests answered with 5xx (status_class=\"5xx\"; probes and /metrics are not "
        "counted). 503 with Retry-After is the services' answer to overload and dependency outages "
        "(alerts TiketiQueueHigh5xxRatio, TiketiReservationHigh5xxRatio).",
        [q(f'sum by (tiketi_event) (rate(tiketi_{c}_http_request_duration_seconds_count{{{SVC}, status_class="5xx"}}'
           f"[$__rate_interval])) / sum by (tiketi_event) (rate(tiketi_{c}_http_request_duration_seconds_count"
           f"{{{SVC}}}[$__rate_interval]))", f"{{{{tiketi_event}}}} {c}") for c in COMPONENTS],
        unit="percentunit", w=24))
    return b.build()


def latency_panel(component, w):
    metric = f"tiketi_{component}_http_request_duration_seconds_bucket"
    targets = [q(f"histogram_quantile({p}, sum by (le) (rate({metric}{{{SVC}}}[$__rate_interval])))", f"p{int(p * 100)}")
               for p in (0.5, 0.95, 0.99)]
    targets.append(q(f"histogram_quantile(0.99, sum by (le, route) (rate({metric}{{{SVC}}}[$__rate_interval])))",
                     "p99 {{route}}"))
    return ts(f"{component.capitalize()} latency",
              f"HTTP request latency of the {component} service's API routes: p50/p95/p99 of all routes, "
              f"and p99 per route.", targets, unit="s", w=w)


def render():
    return {
        "tiketi-operator.json": operator_dashboard(),
        "tiketi-services.json": services_dashboard(),
    }


def main(argv):
    check = "--check" in argv
    stale = []
    for name, board in render().items():
        doc = json.loads(json.dumps(board, cls=JSONEncoder))
        # Unique panel ids in layout order (the SDK leaves them unset; links and the panel editor
        # need them stable across regenerations).
        for i, panel in enumerate(doc["panels"], start=1):
            panel["id"] = i
        text = json.dumps(doc, indent=2, sort_keys=True) + "\n"
        path = OUT / name
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            OUT.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        print(f"stale dashboards: {', '.join(stale)}: run python3 manifests/grafana/dashboards.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
