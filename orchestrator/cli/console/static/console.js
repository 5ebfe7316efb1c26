// The console's one script: a run's page follows the run live (server-sent events the
// console pushes when the bus says the run moved), and the time-travel slider shows the
// run at the position it is moved to. Everything else is plain HTML forms.
"use strict";

window.batonDelays = [];

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
  }
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

function followRun(section) {
  const source = new EventSource("/runs/" + encodeURIComponent(section.dataset.run) + "/live");
  source.addEventListener("state", (message) => {
    const state = JSON.parse(message.data);
    const escalated = updateRun(state);
    if (ENDED.includes(state.status)) {
      source.close();
      runSection().dataset.live = "ended";
      refreshSection("ended");
    } else if (escalated) {
      refreshSection("following");
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

document.addEventListener("DOMContentLoaded", () => {
  const section = runSection();
  if (section && section.dataset.live === "1") followRun(section);
  travel();
});
