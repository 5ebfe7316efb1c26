// The console's one script: a run's page follows the run live (server-sent events the
// console pushes when the bus says the run moved), and the time-travel slider shows the
// run at the position it is moved to. Everything else is plain HTML forms.
"use strict";

window.batonDelays = [];

function esc(text) {
  const span = document.createElement("span");
  span.textContent = String(text);
  return span.innerHTML;
}

function updateRun(section, state) {
  const runStatus = document.getElementById("run-status");
  if (runStatus) {
    runStatus.textContent = state.status;
    runStatus.className = "st " + state.status;
  }
  const tokens = document.getElementById("run-tokens");
  if (tokens) tokens.textContent = state.tokens;
  const body = section.querySelector("table.tasks tbody");
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
}

function followRun(section) {
  const source = new EventSource("/runs/" + encodeURIComponent(section.dataset.run) + "/live");
  source.addEventListener("state", (message) => {
    const state = JSON.parse(message.data);
    updateRun(section, state);
    if (["completed", "failed", "stopped"].includes(state.status)) {
      source.close();
      section.dataset.live = "ended";
      refreshSection(section);
    }
  });
  source.addEventListener("problem", (message) => {
    source.close();
    section.dataset.live = "lost";
    section.dataset.problem = JSON.parse(message.data);
  });
  source.onerror = () => { section.dataset.live = "lost"; };
  section.dataset.live = "following";
}

// Once the run has ended, its timeline, token use, result and events are read again
// (the page's own HTML, fetched from the console) and put in place: no reload.
function refreshSection(section) {
  fetch(window.location.href, { credentials: "same-origin" })
    .then((response) => response.text())
    .then((html) => {
      const fresh = new DOMParser().parseFromString(html, "text/html").getElementById("run");
      if (!fresh) return;
      fresh.dataset.live = "ended";
      fresh.dataset.status = section.dataset.status;
      section.replaceWith(fresh);
      travel();
    });
}

function travel() {
  const slider = document.getElementById("travel");
  if (!slider) return;
  const shown = document.getElementById("travel-at");
  slider.addEventListener("input", () => { shown.textContent = slider.value; });
  slider.addEventListener("change", () => { slider.form.submit(); });
}

document.addEventListener("DOMContentLoaded", () => {
  const section = document.getElementById("run");
  if (section && section.dataset.live === "1") followRun(section);
  travel();
});
