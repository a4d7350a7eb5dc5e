"""Metric and label names of tiketi's Prometheus queries, checked against the Rust sources.

Used by e2e/checks/helm for the dashboards, the alert rules and the example TicketingEvents'
Prometheus steps:

- `registered(root)` reads every `register("name", "help", m.field…)` of the operator and the services
  (under their `sub_registry_with_prefix`), the type of `field` (`Family<Labels, …>`, the shared
  `RequestDurations`, or a bare Counter/Gauge/Histogram) and the fields of `Labels`
  (`#[derive(EncodeLabelSet)]` structs), giving {metric name: its own label names};
- `check(expr, metrics, legend)` returns what an expression names that does not exist: unknown
  metrics, matchers on labels the metric does not have, `by`/`on`/`without` labels no metric of the
  expression has, and legend `{{label}}`s the query's aggregation drops.

Target labels are the ones the chart's monitors give a series (docs/contracts.md, "Metrics"):
the ServiceMonitor (operator, honorLabels) and the PodMonitor (event pods, plus tiketi_event and
tiketi_component).
"""

import pathlib
import re

TARGET = {"job", "instance", "namespace", "pod", "container", "endpoint", "service"}
POD_TARGET = TARGET | {"tiketi_event", "tiketi_component"}
SUFFIXES = ("_total", "_bucket", "_count", "_sum", "_created")
UNIT_SUFFIX = {"Seconds": "_seconds", "Bytes": "_bytes", "Ratios": "_ratios"}
PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile", "count_values",
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset", "bool",
    "rate", "irate", "increase", "delta", "idelta", "deriv", "histogram_quantile", "label_replace",
    "label_join", "absent", "absent_over_time", "sort", "sort_desc", "clamp_min", "clamp_max", "vector",
    "scalar", "time", "abs", "ceil", "floor", "round", "changes", "resets", "max_over_time",
    "min_over_time", "avg_over_time", "sum_over_time", "count_over_time", "last_over_time", "up",
}


def _label_structs(text):
    out = {}
    for m in re.finditer(r"#\[derive\([^)]*EncodeLabelSet[^)]*\)\]\s*pub struct (\w+)\s*\{(.*?)\n\}", text, re.S):
        out[m.group(1)] = set(re.findall(r"pub (\w+):", m.group(2)))
    return out


def registered(root="."):
    root = pathlib.Path(root)
    crates = [root / "operator/src", *sorted(p for p in (root / "services").glob("*/src"))]
    shared = {}
    for src in (root / "services/shared/src").rglob("*.rs"):
        shared.update(_label_structs(src.read_text()))
    # The shared request histogram: RequestDurations(Family<RequestLabels, Histogram, …>).
    request_labels = shared.get("RequestLabels")
    metrics = {}
    for crate in crates:
        files = sorted(crate.rglob("*.rs"))
        texts = {f: f.read_text() for f in files}
        structs = dict(shared)
        for t in texts.values():
            structs.update(_label_structs(t))
        for f, text in texts.items():
            fields = {}
            for m in re.finditer(r"\b(\w+): Family<(\w+),", text):
                fields[m.group(1)] = structs.get(m.group(2))
            for m in re.finditer(r"\b(\w+): RequestDurations\b", text):
                fields[m.group(1)] = request_labels
            for m in re.finditer(r"\b(\w+): (Counter|Gauge|Histogram)\b", text):
                fields.setdefault(m.group(1), set())
            prefixes = [(m.start(), m.group(1)) for m in
                        re.finditer(r'sub_registry_with_prefix\(\s*"([a-z0-9_]+)"', text)]
            for m in re.finditer(
                    r'\.register(_with_unit)?\(\s*"([a-z0-9_]+)",\s*(?:"(?:[^"\\]|\\.)*"|[\w:]+),\s*'
                    r'(?:[^,()]*?,\s*)?(?:m|self|metrics)\.(\w+)\.(?:clone|family)\(\)', text, re.S):
                before = [p for pos, p in prefixes if pos < m.start()]
                if not before:
                    continue
                name = f"{before[-1]}_{m.group(2)}"
                if m.group(1):
                    unit = re.search(r"Unit::(\w+)", m.group(0))
                    name += UNIT_SUFFIX.get(unit.group(1), "") if unit else ""
                labels = fields.get(m.group(3))
                if labels is None:
                    raise SystemExit(f"{f}: cannot tell the labels of {name} (field {m.group(3)})")
                metrics[name] = set(labels)
    if not metrics:
        raise SystemExit("found no registered metrics in the sources")
    return metrics


def base(name, metrics):
    if name in metrics:
        return name, ""
    for s in SUFFIXES:
        if name.endswith(s) and name[: -len(s)] in metrics:
            return name[: -len(s)], s
    return None, ""


def labels_of(name, metrics):
    b, suffix = base(name, metrics)
    if name == "up":
        return set(POD_TARGET)
    if b is None:
        return None
    own = set(metrics[b]) | ({"le"} if suffix == "_bucket" else set())
    return own | (POD_TARGET if not b.startswith("tiketi_operator_") else TARGET)


def _strip_strings(expr):
    return re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)


def check(expr, metrics, legend=""):
    """Problems of one expression (empty when every name exists)."""
    problems = []
    plain = _strip_strings(expr)
    clauses = r'\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)'
    # Selectors: a metric name, optionally followed by {matchers} (grouping clauses taken out first,
    # so their label names are not read as metric names).
    names = {}
    for m in re.finditer(r'\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?', re.sub(clauses, " ", plain)):
        word, matchers = m.group(1), m.group(2)
        if word in PROMQL_WORDS and word != "up":
            continue
        if not (word.startswith("tiketi_") or word == "up"):
            continue
        own = labels_of(word, metrics)
        if own is None:
            problems.append(f"unknown metric {word}")
            continue
        names[word] = own
        for lab in re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)', matchers or ""):
            if lab not in own:
                problems.append(f"{word} has no label {lab} (it has {', '.join(sorted(own))})")
    known = set().union(*names.values()) if names else set()
    # label_replace(…, "dst", …) creates a label.
    for m in re.finditer(r'label_replace\([^"]*"(\w+)"', expr):
        known.add(m.group(1))
    grouped = []
    for m in re.finditer(clauses, plain):
        labs = [x.strip() for x in m.group(2).split(",") if x.strip()]
        if m.group(1) == "by":
            grouped.append(set(labs))
        for lab in labs:
            if lab not in known:
                problems.append(f"{m.group(1)} ({lab}): no metric of the expression has label {lab}")
    for lab in re.findall(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}", legend or ""):
        if grouped:
            kept = set().union(*grouped) - ({"le"} if "histogram_quantile" in plain else set())
            if lab not in kept:
                problems.append(f"legend {{{{{lab}}}}} is not a label the aggregation keeps "
                                f"(by: {', '.join(sorted(kept)) or 'nothing'})")
        elif lab not in known:
            problems.append(f"legend {{{{{lab}}}}}: no metric of the expression has label {lab}")
    return problems
