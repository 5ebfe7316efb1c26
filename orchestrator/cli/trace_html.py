"""`baton trace <run> --html FILE`: one self-contained HTML page (no external resources)
with the run's timeline and its task graph, drawn by inline JavaScript from the timeline
embedded as JSON. Text from the log is only ever set as text, never parsed as markup."""

from __future__ import annotations

import html
import json

import msgspec

from orchestrator.cli.trace_model import PASSED_ON, RUN_STATUSES, TASK_STATUSES, Timeline, depths

BARS = {
    "succeeded": ("#2da44e", "attempt succeeded"),
    "passed": ("#0969da", "attempt passed its task on (handed off, or delegated to subtasks)"),
    "failed": ("#cf222e", "attempt failed (error, timeout, agent lost...)"),
    "cancelled": ("#afb8c1", "attempt cancelled"),
    "running": ("#bf8700", "attempt still running"),
}
"""Bar classes: colour and what the legend says of them."""
NODES = {
    "succeeded": ("#2da44e", "#dafbe1"),
    "failed": ("#cf222e", "#ffebe9"),
    "cancelled": ("#afb8c1", "#f6f8fa"),
    "skipped": ("#8c959f", "#f6f8fa"),
    "running": ("#bf8700", "#fff8c5"),
    "active": ("#0969da", "#ddf4ff"),
    "escalated": ("#8250df", "#fbefff"),
    "pending": ("#57606a", "#ffffff"),
}
"""Task graph node colours (stroke, fill) per task status; a status the core adds later
is drawn like `pending` until it gets colours of its own."""
RUNS = {"completed": "#1a7f37", "failed": "#cf222e", "stopped": "#9a6700"}
"""Run status colours in the heading; others (new, running) are amber."""


def _status_css() -> str:
    """CSS for every task and run status the core has (derived, so none is unstyled)."""
    rules = []
    for status in TASK_STATUSES:
        stroke, fill = NODES.get(status, NODES["pending"])
        rules.append(f"svg .node.{status} rect{{stroke:{stroke};fill:{fill}}}")
    for status in RUN_STATUSES:
        rules.append(f".status-{status}{{color:{RUNS.get(status, '#9a6700')}}}")
    for kind, (colour, _) in BARS.items():
        rules.append(f".bar.{kind},.swatch.{kind}{{background:{colour}}}")
    return "\n".join(rules)


def _legend() -> str:
    """The legend: what each bar colour, a dashed mark and each node colour mean."""
    bars = "".join(
        f'<span class="key"><span class="swatch {kind}"></span>{html.escape(text)}</span>'
        for kind, (_, text) in BARS.items()
    )
    nodes = ""
    for status in TASK_STATUSES:
        stroke, fill = NODES.get(status, NODES["pending"])
        style = f"background:{fill};border:2px solid {stroke}"
        nodes += (
            f'<span class="key"><span class="swatch" style="{style}"></span>task {status}</span>'
        )
    mark = '<span class="key"><span class="swatch mark-key"></span>a mark (see Marks)</span>'
    return f'<div id="legend">{bars}{mark}<br>{nodes}</div>'


_CSS = """
body{font:13px/1.4 system-ui,sans-serif;margin:16px;color:#222;background:#fafafa}
h1{font-size:18px;margin:0 0 4px} .meta{color:#555;margin-bottom:12px}
#timeline{position:relative;border:1px solid #ddd;background:#fff;padding:6px 0}
.row{display:flex;align-items:center;height:22px}
.row:hover{background:#f0f4ff}
.label{width:260px;box-sizing:border-box;flex:none;padding:0 8px;white-space:nowrap;overflow:hidden;
  text-overflow:ellipsis;font-family:ui-monospace,monospace;font-size:12px}
.track{position:relative;flex:1;height:14px;margin-right:12px}
.bar{position:absolute;top:0;height:14px;border-radius:3px;min-width:2px}
.mark{position:absolute;top:0;bottom:0;width:0;border-left:2px dashed #8250df}
.axis{display:flex;justify-content:space-between;margin:2px 12px 0 260px;color:#666}
h2{font-size:15px;margin:20px 0 6px}
svg .node rect{fill:#fff;stroke:#57606a;rx:6}
svg .edge{stroke:#8c959f;fill:none;marker-end:url(#arrow)}
svg text{font:12px ui-monospace,monospace}
table{border-collapse:collapse;margin-top:6px} td,th{padding:2px 8px;text-align:left}
#legend{margin:8px 0;color:#444} .key{display:inline-block;margin:2px 14px 2px 0}
.swatch{display:inline-block;width:14px;height:10px;border-radius:2px;margin-right:5px;
  vertical-align:middle;box-sizing:border-box}
.swatch.mark-key{width:0;border-left:2px dashed #8250df;height:14px}
"""

_JS = r"""
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("baton-data").textContent);
  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    for (var k in attrs || {}) node.setAttribute(k, attrs[k]);
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function svg(tag, attrs, text) {
    var node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (var k in attrs || {}) node.setAttribute(k, attrs[k]);
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function secs(s) { return s < 1 ? (s * 1000).toFixed(0) + " ms" : s.toFixed(2) + " s"; }
  var start = data.origin, span = Math.max(data.end - data.origin, 1e-6);
  function pct(t) { return Math.max(0, Math.min(100, (t - start) / span * 100)); }

  var head = document.getElementById("head");
  head.appendChild(el("h1", {}, "run " + data.run_id + " \u2014 " + data.workflow));
  var meta = el("div", {"class": "meta"});
  meta.appendChild(el("span", {"class": "status-" + data.status, "id": "run-status"},
                      data.status));
  meta.appendChild(document.createTextNode(
    (data.finished !== null ? " in " + secs(data.finished - data.started) : "") +
    " \u00b7 " + data.tasks.length + " tasks \u00b7 " + data.events + " events \u00b7 trace " +
    data.trace_id + (data.reason ? " \u00b7 " + data.reason : "")));
  head.appendChild(meta);

  var timeline = document.getElementById("timeline"), rows = 0;
  data.tasks.forEach(function (task) {
    var attempts = task.attempts.length ? task.attempts : [null];
    attempts.forEach(function (a) {
      var row = el("div", {"class": "row", "data-task": task.task_id,
                           "data-attempt": a ? String(a.attempt) : "0"});
      var label = a ? task.task_id + " #" + a.attempt + "  " + a.agent_id
                    : task.task_id + "  (" + task.status + ")";
      row.appendChild(el("div", {"class": "label", "title": label}, label));
      var track = el("div", {"class": "track"});
      if (a) {
        var end = a.end === null ? data.end : a.end;
        var outcome = ["succeeded", "running", "cancelled"].indexOf(a.outcome) >= 0
          ? a.outcome : data.passed_on.indexOf(a.outcome) >= 0 ? "passed" : "failed";
        var bar = el("div", {"class": "bar " + outcome, "data-outcome": a.outcome});
        bar.style.left = pct(a.start) + "%";
        bar.style.width = Math.max(pct(end) - pct(a.start), 0.3) + "%";
        bar.title = task.task_id + " attempt " + a.attempt + " on " + a.agent_id + ": " +
          a.outcome.replace("_", " ") + " after " + secs(end - a.start) +
          (a.error ? " \u2014 " + a.error : "") +
          (a.retried ? " (retried)" : "") + (a.tokens ? " \u00b7 " + a.tokens + " tokens" : "") +
          "\nrouted: " + a.reason;
        track.appendChild(bar);
      }
      row.appendChild(track);
      timeline.appendChild(row);
      rows += 1;
    });
  });
  data.marks.forEach(function (m) {
    var mark = el("div", {"class": "mark", "data-kind": m.kind});
    mark.style.left = "calc(260px + (100% - 272px) * " + pct(m.at) / 100 + ")";
    mark.title = m.kind + (m.task_id ? " " + m.task_id : "") + ": " + m.text;
    timeline.appendChild(mark);
  });
  var axis = document.getElementById("axis");
  ["0", "+" + secs(span / 2), "+" + secs(span)].forEach(function (t) {
    axis.appendChild(el("span", {}, t));
  });

  var depth = data.depths, cols = {}, maxRows = 0;
  data.tasks.forEach(function (t) {
    var d = depth[t.task_id] || 0;
    (cols[d] = cols[d] || []).push(t);
    maxRows = Math.max(maxRows, cols[d].length);
  });
  var W = 230, H = 44, gapX = 60, gapY = 16, pos = {};
  var ncols = Object.keys(cols).length;
  var graph = svg("svg", {"width": ncols * (W + gapX), "height": maxRows * (H + gapY) + 10,
                          "id": "graph"});
  var defs = svg("defs");
  var marker = svg("marker", {"id": "arrow", "viewBox": "0 0 10 10", "refX": "10",
                              "refY": "5", "markerWidth": "6", "markerHeight": "6",
                              "orient": "auto"});
  marker.appendChild(svg("path", {"d": "M0,0 L10,5 L0,10 z", "fill": "#8c959f"}));
  defs.appendChild(marker);
  graph.appendChild(defs);
  Object.keys(cols).forEach(function (d) {
    cols[d].forEach(function (t, i) {
      pos[t.task_id] = {x: Number(d) * (W + gapX) + 5, y: i * (H + gapY) + 5};
    });
  });
  data.tasks.forEach(function (t) {
    t.deps.forEach(function (dep) {
      if (!pos[dep]) return;
      var a = pos[dep], b = pos[t.task_id];
      graph.appendChild(svg("path", {"class": "edge", "data-from": dep, "data-to": t.task_id,
        "d": "M" + (a.x + W) + "," + (a.y + H / 2) + " C" + (a.x + W + gapX / 2) + "," +
             (a.y + H / 2) + " " + (b.x - gapX / 2) + "," + (b.y + H / 2) + " " + b.x + "," +
             (b.y + H / 2)}));
    });
  });
  data.tasks.forEach(function (t) {
    var p = pos[t.task_id];
    var g = svg("g", {"class": "node " + t.status, "data-task": t.task_id,
                      "transform": "translate(" + p.x + "," + p.y + ")"});
    g.appendChild(svg("rect", {"width": W, "height": H}));
    g.appendChild(svg("text", {"x": 8, "y": 18}, t.task_id));
    g.appendChild(svg("text", {"x": 8, "y": 34, "fill": "#57606a"},
                      t.role + " \u00b7 " + t.status + " \u00b7 " + t.attempts.length + " att."));
    g.appendChild(svg("title", {}, t.error || t.status));
    graph.appendChild(g);
  });
  document.getElementById("graph-box").appendChild(graph);

  var table = document.getElementById("marks");
  if (!data.marks.length) {
    var none = el("tr", {});
    none.appendChild(el("td", {"colspan": "4"}, "none: no rejected results, handoffs, " +
                        "escalations or limits in this run"));
    table.appendChild(none);
  }
  data.marks.forEach(function (m) {
    var tr = el("tr", {"class": "mark-row"});
    tr.appendChild(el("td", {}, "+" + secs(Math.max(0, m.at - start))));
    tr.appendChild(el("td", {}, m.kind));
    tr.appendChild(el("td", {}, m.task_id));
    tr.appendChild(el("td", {}, m.text));
    table.appendChild(tr);
  });
  document.body.setAttribute("data-rendered", String(rows));
})();
"""


def _data(t: Timeline) -> str:
    """The timeline as JSON safe inside a <script> element (no '<' at all)."""
    fields = msgspec.to_builtins(t)
    fields["end"] = t.end
    fields["origin"] = t.origin
    fields["passed_on"] = list(PASSED_ON)
    fields["depths"] = depths(t)
    return json.dumps(fields, separators=(",", ":")).replace("<", "\\u003c")


def render(t: Timeline) -> str:
    """The whole page as one string."""
    title = html.escape(f"baton trace {t.run_id}")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy"
 content="default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>{title}</title><style>{_CSS}{_status_css()}</style></head>
<body data-rendered="no">
<div id="head"></div>
<h2>Timeline</h2>
<div id="timeline"></div>
<div class="axis" id="axis"></div>
{_legend()}
<h2>Task graph</h2>
<div id="graph-box"></div>
<h2>Marks</h2>
<table id="marks"><tr><th>at</th><th>kind</th><th>task</th><th>detail</th></tr></table>
<noscript>This page draws the run with JavaScript; the data is in the baton-data
element.</noscript>
<script id="baton-data" type="application/json">{_data(t)}</script>
<script>{_JS}</script>
</body></html>
"""
