// The console's one script: a run's page follows the run live (server-sent events the
// console pushes when the bus says the run moved), the runs list, the approvals inbox
// and the agents page follow what moves the same way, and the time-travel slider shows
// the run at the position it is moved to. Everything else is plain HTML forms.
"use strict";

window.batonDelays = [];
// The same for the event lines that follow each state (the newest line's age).
window.batonLineDelays = [];
// What the pushes of a live run brought besides its tasks: event lines, waterfalls.
window.batonPushed = { events: 0, waterfalls: 0, succeededDrawn: 0, graphSucceeded: 0 };

const ENDED = ["completed", "failed", "stopped"];

function esc(text) {
  const span = document.createElement("span");
  span.textContent = String(text);
  return span.innerHTML;
}

function runSection() {
  return document.getElementById("run");
}

// The task table, the run's status and tokens, from one pushed state; true when a task
// now waits for a person that did not before (its decision forms come with the HTML).
function updateRun(state) {
  const section = runSection();
  const runStatus = document.getElementById("run-status");
  if (runStatus) {
    runStatus.textContent = state.status;
    runStatus.className = "st " + state.status;
  }
  const tokens = document.getElementById("run-tokens");
  if (tokens) tokens.textContent = state.tokens;
  const body = section.querySelector("table.tasks tbody");
  let escalated = false;
  for (const [taskId, task] of Object.entries(state.tasks)) {
    let row = body.querySelector('tr[data-task="' + CSS.escape(taskId) + '"]');
    if (!row) {
      row = document.createElement("tr");
      row.dataset.task = taskId;
      if (task.step) row.dataset.step = task.step;
      row.innerHTML = "<td>" + esc(taskId) + "</td><td>" + esc(task.role) + "</td><td></td>" +
        '<td class="st"></td><td class="attempt"></td><td class="agent"></td>' +
        '<td class="tokens"></td><td class="out"></td>';
      body.appendChild(row);
    }
    const cell = row.querySelector("td.st");
    if (task.status === "escalated" && cell.textContent !== "escalated") escalated = true;
    cell.textContent = task.status;
    cell.className = "st " + task.status;
    row.querySelector("td.attempt").textContent = task.attempt;
    row.querySelector("td.agent").textContent = task.agent;
    row.querySelector("td.tokens").textContent = task.tokens;
    const node = section.querySelector('svg.graph g[data-node="' + CSS.escape(taskId) + '"]');
    if (node) node.setAttribute("class", "node st " + task.status);
  }
  recountSteps(section);
  window.batonPushed.graphSucceeded =
    section.querySelectorAll("svg.graph g.node.succeeded").length;
  section.dataset.version = state.version;
  section.dataset.status = state.status;
  // the first state is the one at connection: its event may be old; each later one is
  // pushed because an event was just appended, so its age is the append-to-page delay
  if (section.dataset.seen && state.recorded_at) {
    window.batonDelays.push(Date.now() / 1000 - state.recorded_at);
  }
  section.dataset.seen = "1";
  return escalated;
}

// A large run's graph has a node per step: its tasks, counted again from the task table
// (graph.py draws the same colour and title).
const STEP_ORDER = ["succeeded", "running", "active", "pending", "escalated", "failed",
                    "skipped", "cancelled"];
const STEP_SHOWN = ["failed", "escalated", "running", "active", "pending", "succeeded",
                    "skipped"];

function recountSteps(section) {
  for (const node of section.querySelectorAll("svg.graph g[data-step]")) {
    const step = node.dataset.step;
    const counted = {};
    let total = 0;
    for (const row of section.querySelectorAll('table.tasks tbody tr[data-step="' +
                                               CSS.escape(step) + '"]')) {
      const status = row.querySelector("td.st").textContent;
      counted[status] = (counted[status] || 0) + 1;
      total += 1;
    }
    const shown = STEP_SHOWN.find((s) => counted[s]) || "cancelled";
    node.setAttribute("class", "node st " + shown);
    const said = STEP_ORDER.filter((s) => counted[s]).map((s) => counted[s] + " " + s);
    node.querySelector("title").textContent = step + " (" + total + "): " + said.join(", ");
  }
}

// The run's section read again from the console (its timeline, token use, result,
// events, decision forms) and put in place: no reload.
function refreshSection(live) {
  return fetch(window.location.href, { credentials: "same-origin" })
    .then((response) => response.text())
    .then((html) => {
      const fresh = new DOMParser().parseFromString(html, "text/html").getElementById("run");
      const section = runSection();
      if (!fresh || !section) return;
      fresh.dataset.live = live;
      fresh.dataset.seen = "1";
      fresh.dataset.status = section.dataset.status || fresh.dataset.status;
      section.replaceWith(fresh);
      travel();
    });
}

const EVENTS_MAX = 500;

// The rest of a run's page from one push: its new events' lines (the newest
// EVENTS_MAX kept), its token use, and its waterfall when one was sent.
function updateExtras(state) {
  const section = runSection();
  if (state.events) {
    if (section.dataset.seen && state.recorded_at) {
      window.batonLineDelays.push(Date.now() / 1000 - state.recorded_at);
    }
    const body = section.querySelector("table.events tbody");
    const lines = document.createElement("template");
    lines.innerHTML = state.events;
    for (const row of Array.from(lines.content.children)) {
      if (document.getElementById(row.id)) continue; // shown already (a refresh read it)
      body.appendChild(row);
      window.batonPushed.events += 1;
    }
    while (body.children.length > EVENTS_MAX) body.firstElementChild.remove();
    const count = document.getElementById("events-count");
    if (count) count.textContent = body.children.length;
  }
  if (state.usage) {
    const usage = section.querySelector("table.usage");
    if (usage) usage.outerHTML = state.usage;
  }
  if (state.waterfall) {
    const drawn = document.getElementById("waterfall");
    if (drawn) {
      drawn.innerHTML = state.waterfall;
      window.batonPushed.succeededDrawn = drawn.querySelectorAll("g.succeeded").length;
    }
    window.batonPushed.waterfalls += 1;
  }
}

function followRun(section) {
  const source = new EventSource("/runs/" + encodeURIComponent(section.dataset.run) +
    "/live?after=" + encodeURIComponent(section.dataset.after || "0"));
  source.addEventListener("state", (message) => {
    const state = JSON.parse(message.data);
    const escalated = updateRun(state);
    if (escalated && !ENDED.includes(state.status)) refreshSection("following");
  });
  // each state is followed by the rest of the page it changed; after the last one's
  // (the run ended), the whole section is read again once (its result)
  source.addEventListener("extras", (message) => {
    const extras = JSON.parse(message.data);
    updateExtras(extras);
    if (extras.ended) {
      source.close();
      runSection().dataset.live = "ended";
      refreshSection("ended");
    }
  });
  source.addEventListener("problem", (message) => {
    source.close();
    runSection().dataset.live = "lost";
    runSection().dataset.problem = JSON.parse(message.data);
  });
  source.onerror = () => { runSection().dataset.live = "lost"; };
  section.dataset.live = "following";
}

function travel() {
  const slider = document.getElementById("travel");
  if (!slider) return;
  const shown = document.getElementById("travel-at");
  slider.addEventListener("input", () => { shown.textContent = slider.value; });
  slider.addEventListener("change", () => { slider.form.submit(); });
}

// One row made from the HTML the console rendered (every value escaped there).
function rowOf(html) {
  const template = document.createElement("template");
  template.innerHTML = html;
  return template.content.firstElementChild;
}

// The runs list: a pushed row replaces the run's row; a run not listed yet is added at
// the top of the first page if it matches the list's filters.
function placeRuns(section, rows) {
  const body = section.querySelector("table.runs tbody");
  for (const pushed of rows) {
    const row = rowOf(pushed.html);
    const shown = body.querySelector('tr[data-run="' + CSS.escape(pushed.run) + '"]');
    if (shown) shown.replaceWith(row);
    else if (section.dataset.fresh === "1" && pushed.match) body.prepend(row);
  }
}

// An inbox table holds the pushed rows in their order: rows gone are removed, new ones
// added, and rows still there are left as they are (a reason being typed stays).
function reconcile(section, cls, items) {
  const table = section.querySelector("table." + cls);
  const body = table.querySelector("tbody");
  const keys = new Set(items.map((item) => item[0]));
  for (const row of Array.from(body.children)) {
    if (!keys.has(row.dataset.key)) row.remove();
  }
  let previous = null;
  for (const [key, html] of items) {
    let row = body.querySelector('tr[data-key="' + CSS.escape(key) + '"]');
    if (!row) {
      row = rowOf(html);
      if (previous) previous.after(row);
      else body.prepend(row);
    }
    previous = row;
  }
  table.hidden = items.length === 0;
  const none = table.nextElementSibling;
  if (none && none.classList.contains("none")) none.hidden = items.length !== 0;
}

function followPage(section) {
  const source = new EventSource(section.dataset.follow);
  const pushed = () => { section.dataset.pushes = String(Number(section.dataset.pushes || 0) + 1); };
  source.onopen = () => { section.dataset.live = "following"; };
  source.addEventListener("rows", (message) => {
    placeRuns(section, JSON.parse(message.data));
    pushed();
  });
  source.addEventListener("approvals", (message) => {
    const found = JSON.parse(message.data);
    reconcile(section, "escalated", found.tasks);
    reconcile(section, "calls", found.calls);
    pushed();
  });
  source.addEventListener("agents", (message) => {
    const found = JSON.parse(message.data);
    section.querySelector("table.agents tbody").innerHTML = found.agents;
    section.querySelector("table.system tbody").innerHTML = found.system;
    pushed();
  });
  source.addEventListener("problem", (message) => {
    source.close();
    section.dataset.live = "lost";
    section.dataset.problem = JSON.parse(message.data);
  });
  source.onerror = () => { section.dataset.live = "lost"; };
}

document.addEventListener("DOMContentLoaded", () => {
  const section = runSection();
  if (section && section.dataset.live === "1") followRun(section);
  const follow = document.getElementById("follow");
  if (follow && follow.dataset.follow) followPage(follow);
  travel();
});
