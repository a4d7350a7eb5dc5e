#!/usr/bin/env python3
"""Generates the Grafana dashboards in dashboards/*.json (the files are committed; do not edit them
by hand). Run `python3 manifests/grafana/dashboards.py` after a change here; e2e/checks/helm fails
when the committed JSON differs from what this prints, checks every PromQL expression with promtool
and every tiketi_* metric name against the sources.

Standard library only. Metric names are the ones the Rust crates register:
operator/src/metrics.rs (tiketi_operator_*), services/queue/src/metrics.rs (tiketi_queue_*),
services/reservation/src/metrics.rs (tiketi_reservation_*). Service metrics carry the target labels
tiketi_event and tiketi_component, which the chart's PodMonitor copies from the pod labels the
operator sets (tiketi.gg/event, tiketi.gg/component).
"""

import json
import pathlib
import sys

OUT = pathlib.Path(__file__).resolve().parent / "dashboards"
DS = {"type": "prometheus", "uid": "${datasource}"}


class Board:
    """Lays panels out left to right on Grafana's 24-column grid, wrapping into new rows."""

    def __init__(self):
        self.panels = []
        self.x = 0
        self.y = 0
        self.row_h = 0
        self.next_id = 1

    def _place(self, w, h):
        if self.x + w > 24:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        pos = {"x": self.x, "y": self.y, "w": w, "h": h}
        self.x += w
        self.row_h = max(self.row_h, h)
        return pos

    def _id(self):
        i = self.next_id
        self.next_id += 1
        return i

    def row(self, title):
        if self.x:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        self.panels.append(
            {"type": "row", "title": title, "id": self._id(), "collapsed": False, "panels": [],
             "gridPos": {"x": 0, "y": self.y, "w": 24, "h": 1}}
        )
        self.y += 1

    def panel(self, kind, title, targets, w=12, h=8, unit=None, description="", options=None, overrides=None,
              custom=None, instant=False, fmt=None):
        defaults = {}
        if unit:
            defaults["unit"] = unit
        if custom:
            defaults["custom"] = custom
        p = {
            "type": kind,
            "title": title,
            "description": description,
            "id": self._id(),
            "datasource": DS,
            "gridPos": self._place(w, h),
            "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
            "options": options or {},
            "targets": [
                {
                    "datasource": DS,
                    "refId": chr(ord("A") + i),
                    "expr": expr,
                    "legendFormat": legend,
                    "range": not instant,
                    "instant": instant,
                    **({"format": fmt} if fmt else {}),
                }
                for i, (expr, legend) in enumerate(targets)
            ],
        }
        self.panels.append(p)
        return p

    def timeseries(self, title, targets, **kw):
        kw.setdefault("options", {"legend": {"displayMode": "table", "placement": "right", "calcs": ["lastNotNull", "max"]},
                                  "tooltip": {"mode": "multi", "sort": "desc"}})
        return self.panel("timeseries", title, targets, **kw)


def variables(metric, event_label, matchers=""):
    """Datasource, namespace and event pickers; `matchers` narrows the metric the values come from."""
    ns_sel = f"{metric}{{{matchers}}}" if matchers else metric
    ev_sel = f'{metric}{{{matchers + ", " if matchers else ""}namespace=~"$namespace"}}'
    return [
        {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
         "current": {}, "hide": 0, "refresh": 1},
        {"name": "namespace", "label": "Namespace", "type": "query", "datasource": DS,
         "query": {"query": f"label_values({ns_sel}, namespace)", "refId": "namespace"},
         "definition": f"label_values({ns_sel}, namespace)",
         "multi": True, "includeAll": True, "allValue": ".*", "current": {}, "refresh": 2, "sort": 1},
        {"name": "event", "label": "Event", "type": "query", "datasource": DS,
         "query": {"query": f"label_values({ev_sel}, {event_label})", "refId": "event"},
         "definition": f"label_values({ev_sel}, {event_label})",
         "multi": True, "includeAll": True, "allValue": ".*", "current": {}, "refresh": 2, "sort": 1},
    ]


def dashboard(uid, title, description, board, templating):
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["tiketi"],
        "editable": True,
        "graphTooltip": 1,
        "refresh": "10s",
        "schemaVersion": 39,
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "annotations": {"list": []},
        "links": [{"title": "tiketi", "type": "dashboards", "tags": ["tiketi"], "asDropdown": True}],
        "templating": {"list": templating},
        "panels": board.panels,
        "version": 1,
    }


# === operator: events, replicas, scaling ===

def operator_dashboard():
    sel = 'namespace=~"$namespace", event=~"$event"'
    b = Board()
    b.row("Events")
    b.panel(
        "table", "Phase per event",
        [(f"max by (namespace, event, phase) (tiketi_operator_event_phase{{{sel}}}) == 1", "")],
        w=8, h=8, instant=True, fmt="table",
        description="The schedule phase of each TicketingEvent (Scheduled, PreWarming, OnSale, SoldOut, "
                    "Closing, Closed, Failed).",
        options={"showHeader": True},
    )["transformations"] = [
        {"id": "organize", "options": {"excludeByName": {"Time": True, "Value": True}}}
    ]
    # The operator does not export its signal readings (yet): queue depth and active users come from
    # the queue service, which reads the same Redis keys every tick (every replica reports the same
    # value, hence max). tiketi_event is the TicketingEvent name, like the operator's `event` label.
    svc = 'namespace=~"$namespace", tiketi_event=~"$event"'
    b.timeseries(
        "Queue depth per event",
        [(f"max by (namespace, tiketi_event) (tiketi_queue_depth{{{svc}}})", "{{namespace}}/{{tiketi_event}}")],
        w=8, unit="short",
        description="Users waiting in each event's queue (ZCARD of tiketi:{<event>}:queue), as the queue "
                    "service last read it: the key the autoscaler's queueDepth signal reads.",
    )
    b.timeseries(
        "Active users per event",
        [(f"max by (namespace, tiketi_event) (tiketi_queue_active_users{{{svc}}})", "{{namespace}}/{{tiketi_event}}")],
        w=8, unit="short",
        description="Admitted users whose admission has not expired (the activeUsers signal's definition), "
                    "as the queue service last read it.",
    )

    b.row("Replicas")
    for component in ("queue", "reservation"):
        b.timeseries(
            f"Need vs desired vs ready replicas: {component}",
            [
                (f'max by (namespace, event) (tiketi_operator_needed_replicas{{{sel}, component="{component}"}})',
                 "{{event}} need"),
                (f'max by (namespace, event) (tiketi_operator_desired_replicas{{{sel}, component="{component}"}})',
                 "{{event}} desired"),
                (f'max by (namespace, event) (tiketi_operator_ready_replicas{{{sel}, component="{component}"}})',
                 "{{event}} ready"),
            ],
            w=12, unit="short",
            description=f"The capacity need (signal × (1 + headroom) / perReplica; only with scaling.capacity), "
                        f"the replicas the operator asks for (schedule floor or autoscaler decision) and ready pods "
                        f"of the {component} Deployment. Desired above need: the pre-warm floor or the scale-in "
                        f"window holding; a lasting desired/ready gap means pods cannot start (capacity, image, "
                        f"probes).",
            overrides=[{"matcher": {"id": "byRegexp", "options": ".*desired"},
                        "properties": [{"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}}]}],
        )

    b.row("Scaling")
    b.timeseries(
        "Scaling decisions by direction and reason",
        [(f"sum by (component, direction, reason) (increase(tiketi_operator_scaling_decisions_total{{{sel}}}[$__rate_interval]))",
          "{{component}} {{direction}} ({{reason}})")],
        w=14, unit="short",
        custom={"drawStyle": "bars", "fillOpacity": 60, "stacking": {"mode": "normal"}},
        description="Replica changes per interval, by component, direction (up/down) and reason kind "
                    "(schedule, scaleOut, scaleIn, fallback, …). Details: kubectl describe tev / status.recentDecisions.",
    )
    b.panel(
        "table", "Decisions in the time range",
        [(f"sum by (namespace, event, component, direction, reason) (increase(tiketi_operator_scaling_decisions_total{{{sel}}}[$__range])) > 0",
          "")],
        w=10, h=8, instant=True, fmt="table",
        description="How many replica changes of each kind happened in the selected time range.",
    )["transformations"] = [{"id": "organize", "options": {"excludeByName": {"Time": True}}}]

    b.row("Operator health")
    b.timeseries(
        "Redis errors seen by the services",
        [
            ('sum by (namespace, reason) (rate(tiketi_queue_redis_errors_total{namespace=~"$namespace"}[$__rate_interval]))',
             "queue {{namespace}}: {{reason}}"),
            ('sum by (namespace) (rate(tiketi_reservation_dependency_errors_total{namespace=~"$namespace", dependency="redis"}[$__rate_interval]))',
             "reservation {{namespace}}"),
        ],
        w=8, unit="ops",
        description="Failed Redis calls of the queue and reservation services. Redis is also where the "
                    "autoscaler reads its signals; its own signal health is condition SignalsHealthy on "
                    "each TicketingEvent (kubectl get tev -o wide / describe).",
    )
    b.timeseries(
        "Reconcile duration",
        [
            ("histogram_quantile(0.5, sum by (le) (rate(tiketi_operator_reconcile_duration_seconds_bucket[$__rate_interval])))", "p50"),
            ("histogram_quantile(0.99, sum by (le) (rate(tiketi_operator_reconcile_duration_seconds_bucket[$__rate_interval])))", "p99"),
        ],
        w=8, unit="s",
        description="Time one reconciliation of a TicketingEvent takes (gather, validate, build, apply, status).",
    )
    b.timeseries(
        "Reconciliations and errors",
        [
            ("sum(rate(tiketi_operator_reconciliations_total[$__rate_interval]))", "reconciliations"),
            ("sum by (error) (rate(tiketi_operator_reconcile_errors_total[$__rate_interval]))", "error: {{error}}"),
        ],
        w=8, unit="ops",
        description="Reconciliations per second, and failed ones by error kind (each is also a Warning Event "
                    "on the TicketingEvent).",
    )
    b.panel(
        "stat", "Leader",
        [("sum(tiketi_operator_leader)", "leaders")],
        w=4, h=4,
        description="Operator replicas holding the leader Lease: 1 is healthy, 0 means nobody writes.",
        options={"colorMode": "background", "reduceOptions": {"calcs": ["lastNotNull"]}},
        overrides=[],
    )["fieldConfig"]["defaults"]["thresholds"] = {
        "mode": "absolute",
        "steps": [{"color": "red", "value": None}, {"color": "green", "value": 1}, {"color": "red", "value": 2}],
    }
    return dashboard(
        "tiketi-operator", "tiketi / Operator and events",
        "Per-event phase, queue depth and active users, desired vs ready replicas, scaling decisions, Redis "
        "errors and reconcile health of the tiketi operator.",
        b, variables("tiketi_operator_event_phase", "event"),
    )


# === services: queue and reservation ===

def services_dashboard():
    sel = 'namespace=~"$namespace", tiketi_event=~"$event"'
    b = Board()
    b.row("Waiting room (queue)")
    b.timeseries(
        "Joins by result",
        [(f"sum by (result) (rate(tiketi_queue_joins_total{{{sel}}}[$__rate_interval]))", "{{result}}")],
        w=8, unit="reqps",
        description="Join requests per second by outcome (new, repeat, prequeue, admitted, sold_out, closed).",
    )
    b.timeseries(
        "Admissions",
        [(f"sum by (event) (rate(tiketi_queue_admissions_total{{{sel}}}[$__rate_interval]))", "{{event}}")],
        w=8, unit="ops",
        description="Users moved from the queue to the active set per second (bounded by admission.ratePerSecond "
                    "and maxActive).",
    )
    b.timeseries(
        "Queue depth and active users (service view)",
        [
            (f"max by (event) (tiketi_queue_depth{{{sel}}})", "{{event}} waiting"),
            (f"max by (event) (tiketi_queue_prequeue_depth{{{sel}}})", "{{event}} pre-queue"),
            (f"max by (event) (tiketi_queue_active_users{{{sel}}})", "{{event}} active"),
        ],
        w=8, unit="short",
        description="What the queue replicas last saw in Redis.",
    )
    b.timeseries(
        "Open SSE streams and refusals",
        [
            (f"sum(tiketi_queue_sse_streams{{{sel}}})", "open streams"),
            (f"sum by (reason) (rate(tiketi_queue_rate_limited_total{{{sel}}}[$__rate_interval]))", "429 {{reason}}"),
            (f"sum by (reason) (rate(tiketi_queue_redis_errors_total{{{sel}}}[$__rate_interval]))", "redis error {{reason}}"),
            (f"sum by (event) (rate(tiketi_queue_dropped_total{{{sel}}}[$__rate_interval]))", "dropped {{event}}"),
        ],
        w=12, unit="short",
    )
    b.timeseries(
        "Queue latency",
        [
            (f"histogram_quantile(0.5, sum by (le) (rate(tiketi_queue_http_request_duration_seconds_bucket{{{sel}}}[$__rate_interval])))", "p50"),
            (f"histogram_quantile(0.99, sum by (le) (rate(tiketi_queue_http_request_duration_seconds_bucket{{{sel}}}[$__rate_interval])))", "p99"),
            (f"histogram_quantile(0.99, sum by (le, route) (rate(tiketi_queue_http_request_duration_seconds_bucket{{{sel}}}[$__rate_interval])))", "p99 {{route}}"),
        ],
        w=12, unit="s",
        description="HTTP request latency of the queue service's API routes, all together and per route.",
    )

    b.row("Reservation")
    b.timeseries(
        "Holds by outcome",
        [(f"sum by (outcome) (rate(tiketi_reservation_holds_total{{{sel}}}[$__rate_interval]))", "{{outcome}}")],
        w=8, unit="reqps",
        description="Hold requests per second: held, conflict (seat taken), not_admitted, unauthenticated, "
                    "unavailable, invalid.",
    )
    b.timeseries(
        "Confirms by outcome",
        [(f"sum by (outcome) (rate(tiketi_reservation_confirms_total{{{sel}}}[$__rate_interval]))", "{{outcome}}")],
        w=8, unit="reqps",
        description="Confirm requests per second: confirmed, replayed (Idempotency-Key), conflict, refused, "
                    "unavailable, invalid.",
    )
    b.timeseries(
        "Conflicts and releases",
        [
            (f"sum by (stage) (rate(tiketi_reservation_conflicts_total{{{sel}}}[$__rate_interval]))", "conflict at {{stage}}"),
            (f"sum by (outcome) (rate(tiketi_reservation_releases_total{{{sel}}}[$__rate_interval]))", "release {{outcome}}"),
        ],
        w=8, unit="ops",
        description="Seats found taken at hold (Redis lock) or at confirm (PostgreSQL unique constraint), and "
                    "hold releases.",
    )
    b.timeseries(
        "Seats",
        [(f"max by (event, status) (tiketi_reservation_seats{{{sel}}})", "{{event}} {{status}}")],
        w=8, unit="short",
        custom={"stacking": {"mode": "normal"}, "fillOpacity": 30},
        description="Seats by status (sold, held, available) as last computed.",
    )
    b.timeseries(
        "Reservation latency",
        [
            (f"histogram_quantile(0.5, sum by (le) (rate(tiketi_reservation_http_request_duration_seconds_bucket{{{sel}}}[$__rate_interval])))", "p50"),
            (f"histogram_quantile(0.99, sum by (le) (rate(tiketi_reservation_http_request_duration_seconds_bucket{{{sel}}}[$__rate_interval])))", "p99"),
            (f"histogram_quantile(0.99, sum by (le, route) (rate(tiketi_reservation_http_request_duration_seconds_bucket{{{sel}}}[$__rate_interval])))", "p99 {{route}}"),
        ],
        w=8, unit="s",
        description="HTTP request latency of the reservation service's API routes, all together and per route.",
    )
    b.timeseries(
        "Database pool and dependency errors",
        [
            (f"sum by (pool, state) (tiketi_reservation_db_pool_connections{{{sel}}})", "{{pool}} {{state}}"),
            (f"sum by (dependency) (rate(tiketi_reservation_dependency_errors_total{{{sel}}}[$__rate_interval]))", "errors {{dependency}}"),
        ],
        w=8, unit="short",
        description="PostgreSQL pool connections (writer and reader pools) and failed Redis/PostgreSQL calls.",
    )

    b.row("Errors")
    b.timeseries(
        "5xx ratio",
        [
            (f'sum(rate(tiketi_queue_http_request_duration_seconds_count{{{sel}, status_class="5xx"}}[$__rate_interval])) '
             f"/ sum(rate(tiketi_queue_http_request_duration_seconds_count{{{sel}}}[$__rate_interval]))", "queue"),
            (f'sum(rate(tiketi_reservation_http_request_duration_seconds_count{{{sel}, status_class="5xx"}}[$__rate_interval])) '
             f"/ sum(rate(tiketi_reservation_http_request_duration_seconds_count{{{sel}}}[$__rate_interval]))", "reservation"),
        ],
        w=24, unit="percentunit",
        description="Share of API requests answered with 5xx (status_class=\"5xx\"; probes and /metrics are not "
                    "counted). 503 with Retry-After is the services' answer to overload and dependency outages.",
    )
    return dashboard(
        "tiketi-services", "tiketi / Queue and reservation services",
        "Joins and admissions of the waiting room; holds, confirms and conflicts of the reservation service; "
        "latency p50/p99 and 5xx ratio of both.",
        b, variables("up", "tiketi_event", 'tiketi_component!=""'),
    )


def render():
    return {
        "tiketi-operator.json": operator_dashboard(),
        "tiketi-services.json": services_dashboard(),
    }


def main(argv):
    check = "--check" in argv
    stale = []
    for name, board in render().items():
        text = json.dumps(board, indent=2, sort_keys=False) + "\n"
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
