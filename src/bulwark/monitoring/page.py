"""The status page: plain HTML, CSS and a little JavaScript, no external assets.

The page polls the overview (``/manage/v1/monitoring/overview?scope=all``) every two seconds and
redraws itself with DOM calls (text only, never HTML from the data). It is served with a strict
Content-Security-Policy, so the script and style are files of their own rather than inline.
"""

from __future__ import annotations

from html import escape

SCRIPT_PATH = "/manage/status/status.js"
STYLE_PATH = "/manage/status/status.css"
LOGIN_PATH = "/manage/status/login"
LOGOUT_PATH = "/manage/status/logout"

_HEAD = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{title}}</title>
<link rel="stylesheet" href="{STYLE_PATH}">
</head>
"""


def status_html() -> str:
    return _HEAD.format(title="Bulwark status") + f"""<body>
<header>
  <h1>Bulwark status</h1>
  <span id="overall" class="badge UNKNOWN">loading</span>
  <span id="summary"></span>
  <form method="post" action="{LOGOUT_PATH}"><button type="submit">Log out</button></form>
</header>
<p id="state" class="muted">loading&hellip;</p>
<noscript><p class="error">This page needs JavaScript to refresh itself; the same facts are at
<a href="/manage/v1/monitoring/overview?scope=all">/manage/v1/monitoring/overview</a>.</p></noscript>
<section>
  <h2>Active alerts</h2>
  <ul id="alerts"></ul>
</section>
<section>
  <h2>Nodes</h2>
  <table id="nodes">
    <thead><tr>
      <th>node</th><th>role</th><th>state</th><th>serving</th><th>level</th><th>lag</th>
      <th>needs repair</th><th>disk</th><th>memory</th><th>load/core</th><th>webhooks</th><th>detail</th>
    </tr></thead>
    <tbody></tbody>
  </table>
</section>
<section id="cluster" hidden>
  <h2>Cluster</h2>
  <dl id="cluster-facts"></dl>
</section>
<footer id="thresholds" class="muted"></footer>
<script src="{SCRIPT_PATH}" defer></script>
</body>
</html>
"""


def login_html(message: str | None = None) -> str:
    error = f'<p class="error" id="login-error">{escape(message)}</p>' if message else ""
    return _HEAD.format(title="Bulwark status: log in") + f"""<body>
<header><h1>Bulwark status</h1></header>
<section class="login">
  <p>This page is for site administrators. Log in with a token that has the <code>site_admin</code> scope
  (for example the one printed when the node was first started).</p>
  {error}
  <form method="post" action="{LOGIN_PATH}">
    <label for="token">Token</label>
    <input id="token" name="token" type="password" autocomplete="off" required>
    <button type="submit">Log in</button>
  </form>
</section>
</body>
</html>
"""


STYLE = """
:root { font-family: system-ui, sans-serif; color: #1d2329; background: #f6f7f9; }
body { margin: 0 auto; max-width: 1200px; padding: 1rem 1.5rem; }
header { display: flex; align-items: center; gap: 1rem; flex-wrap: wrap; }
header h1 { font-size: 1.4rem; margin: 0.5rem 0; }
header form { margin-left: auto; }
h2 { font-size: 1.1rem; margin: 1.5rem 0 0.5rem; }
table { border-collapse: collapse; width: 100%; background: #fff; }
td:not(:last-child) { white-space: nowrap; }
th, td { text-align: left; padding: 0.35rem 0.6rem; border-bottom: 1px solid #e2e5e9; font-size: 0.9rem; }
th { background: #eceff3; font-weight: 600; }
tr.down td { background: #fdecec; }
.badge { display: inline-block; padding: 0.1rem 0.5rem; border-radius: 0.7rem; font-size: 0.8rem;
         font-weight: 600; color: #fff; background: #7a8591; }
.OK { background: #2e8540; }
.WARNING { background: #c77c02; }
.CRITICAL { background: #c62828; }
.UNKNOWN { background: #6b4ba1; }
.muted { color: #66707a; font-size: 0.85rem; }
.error { color: #c62828; }
ul#alerts { list-style: none; padding: 0; margin: 0; }
ul#alerts li { background: #fff; border-left: 4px solid #c77c02; padding: 0.4rem 0.6rem; margin-bottom: 0.3rem; }
ul#alerts li.CRITICAL-alert { border-left-color: #c62828; }
ul#alerts li.none { border-left-color: #2e8540; }
footer { margin-top: 1rem; }
dl { display: grid; grid-template-columns: max-content auto; gap: 0.2rem 1rem; background: #fff; padding: 0.6rem; }
dt { font-weight: 600; }
dd { margin: 0; }
.login form { display: flex; gap: 0.5rem; align-items: center; }
.login input { padding: 0.3rem; min-width: 24rem; }
button { padding: 0.3rem 0.8rem; }
"""


SCRIPT = r"""
"use strict";
const OVERVIEW = "/manage/v1/monitoring/overview?scope=all";
const REFRESH_MS = 2000;

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function badge(level) {
  return el("span", level, "badge " + level);
}

function check(node, name) {
  return (node.checks || []).find((c) => c.check === name);
}

function percent(node, name) {
  const c = check(node, name);
  return c && c.value !== null ? c.value.toFixed(1) + "%" : "-";
}

function lag(node) {
  if (node.lag_seconds !== null && node.lag_seconds !== undefined) {
    return node.lag_seconds.toFixed(1) + "s / " + node.lag_changes + " changes";
  }
  if (node.lag_changes !== null && node.lag_changes !== undefined) return node.lag_changes + " changes";
  return "-";
}

function renderNodes(data) {
  const body = document.querySelector("#nodes tbody");
  body.replaceChildren();
  for (const node of data.nodes) {
    const row = el("tr");
    row.dataset.node = node.name;
    row.dataset.up = String(node.up);
    if (!node.up) row.className = "down";
    const name = el("td");
    name.append(el("strong", node.name));
    if (node.self) name.append(el("span", " (this node)", "muted"));
    name.append(el("div", node.url, "muted"));
    row.append(name, el("td", node.role));
    const state = el("td");
    state.append(node.up ? el("span", "up", "badge OK") : el("span", "down", "badge CRITICAL"));
    if (node.maintenance !== null && node.maintenance !== undefined) state.append(el("span", " maintenance", "muted"));
    row.append(state, el("td", node.serving ? "yes" : "no"));
    const level = el("td");
    level.append(badge(node.level));
    const load = check(node, "load");
    row.append(level, el("td", lag(node)), el("td", node.repairs == null ? "-" : node.repairs),
               el("td", percent(node, "disk")), el("td", percent(node, "memory")),
               el("td", load && load.value !== null ? load.value.toFixed(2) : "-"),
               el("td", (check(node, "webhooks") || {}).detail || "-"),
               el("td", node.error || node.fenced || node.reason || ""));
    body.append(row);
  }
}

function renderAlerts(data) {
  const list = document.getElementById("alerts");
  list.replaceChildren();
  if (!data.alerts.length) {
    list.append(el("li", "No active alerts.", "none"));
    return;
  }
  for (const alert of data.alerts) {
    const item = el("li", null, alert.level + "-alert");
    item.dataset.node = alert.node;
    item.append(badge(alert.level), el("strong", " " + alert.node + " "),
                el("span", alert.check + ": " + alert.detail));
    list.append(item);
  }
}

function renderCluster(data) {
  const section = document.getElementById("cluster");
  const facts = document.getElementById("cluster-facts");
  facts.replaceChildren();
  const c = data.cluster;
  section.hidden = !c;
  if (!c) return;
  const rows = [["cluster", c.name || "?"], ["level", c.level]];
  if (c.repositories) {
    const r = c.repositories;
    rows.push(["repositories", r.total + " total, " + r.fully_replicated + " fully replicated, " +
      r.under_replicated + " under-replicated, " + r.unavailable + " unavailable"]);
    rows.push(["outdated replicas", r.outdated_replicas]);
  }
  const etcd = Object.entries(c.etcd || {}).map(([url, ok]) => url + (ok ? " ok" : " down"));
  rows.push(["etcd", etcd.join(", ") || "-"], ["reconciler", c.reconciler || "none elected"]);
  for (const [k, v] of rows) facts.append(el("dt", k), el("dd", v));
}

function render(data) {
  const overall = document.getElementById("overall");
  overall.className = "badge " + data.level;
  overall.textContent = data.level;
  const down = data.nodes.filter((n) => !n.up).length;
  document.getElementById("summary").textContent = data.mode + " mode, asked node " + data.node + ": " +
    data.nodes.length + " node(s), " + down + " down";
  renderAlerts(data);
  renderNodes(data);
  renderCluster(data);
  const t = data.thresholds;
  document.getElementById("thresholds").textContent = "Thresholds (warning/critical): disk " + t.disk_warning +
    "%/" + t.disk_critical + "%, memory " + t.memory_warning + "%/" + t.memory_critical + "%, 15-minute load " +
    t.load_warning + "/" + t.load_critical + " per core.";
}

function setState(text, failed) {
  const state = document.getElementById("state");
  state.textContent = text;
  state.className = failed ? "error" : "muted";
}

async function refresh() {
  try {
    const response = await fetch(OVERVIEW, {credentials: "same-origin", cache: "no-store"});
    if (response.status === 401 || response.status === 403) {
      window.location.assign("/manage/status");
      return;
    }
    if (!response.ok) throw new Error("HTTP " + response.status);
    const data = await response.json();
    render(data);
    setState("Updated " + new Date().toLocaleTimeString() + " (every " + REFRESH_MS / 1000 + "s).", false);
  } catch (error) {
    setState("Cannot reach this node: " + error.message + "; retrying.", true);
  }
  setTimeout(refresh, REFRESH_MS);
}

refresh();
"""
