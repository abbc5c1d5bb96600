// Queues and jobs (sortable, filterable, paged) and the job detail page with its live log tail.
import { $, api, debounce, errorText, esc, fmtTime, mayChange, on, pretty, say } from "./core.js";

const PAGE_SIZE = 25;
const POLL_MS = 5000;
const LOG_POLL_MS = 1000;
const MAX_LOG_CHARS = 200000;

const list = { jobs: [], stats: null, sort: { key: "created_at", dir: -1 }, page: 0 };
const COLUMNS = [
  ["name", "job"], ["status", "status"], ["queue", "queue"], ["priority", "priority"],
  ["queue_position", "position"], ["workers", "workers"], ["reason", "why it waits"],
  ["created_at", "submitted"], ["start_time", "started"],
];

async function refreshList() {
  try {
    const [jobs, stats] = await Promise.all([api("/dashboard/jobs"), api("/queue")]);
    list.jobs = jobs.jobs;
    list.stats = stats;
  } catch {
    return;
  }
  renderQueues();
  renderJobs();
}

const soon = debounce(refreshList, 200);

export function startJobs() {
  for (const type of ["job_queued", "job_scheduled", "job_started", "job_completed", "limits_updated", "dashboard_resynced"]) {
    on(type, soon);
  }
  on("*", (event) => {
    if (detail.id && event.job_id === detail.id) loadDetail();
  });
  $("#jobs-filter").addEventListener("input", () => { list.page = 0; renderJobs(); });
  $("#jobs-status").addEventListener("change", () => { list.page = 0; renderJobs(); });
  $("#jobs-queue").addEventListener("change", () => { list.page = 0; renderJobs(); });
  $("#jobs-prev").addEventListener("click", () => { list.page = Math.max(0, list.page - 1); renderJobs(); });
  $("#jobs-next").addEventListener("click", () => { list.page += 1; renderJobs(); });
  $("#jobs-table").addEventListener("click", (e) => {
    const th = e.target.closest("th[data-key]");
    if (!th) return;
    const key = th.dataset.key;
    list.sort = { key, dir: list.sort.key === key ? -list.sort.dir : 1 };
    renderJobs();
  });
  $("#job-cancel").addEventListener("click", cancelJob);
  $("#job-priority-set").addEventListener("click", setPriority);
  refreshList();
  setInterval(refreshList, POLL_MS);
}

// "H100 6 / 4 (2 borrowed), vcpus 8 / 64 · cohort lab": a queue's use of its quotas (docs/scheduling.md)
function quotaText(q) {
  if (!q.quota) return "";
  const used = (label, u) => `${label} ${u.used} / ${u.nominal}${u.borrowed ? ` (${u.borrowed} borrowed)` : ""}`;
  const parts = Object.entries(q.quota.gpus || {}).map(([model, u]) => used(model, u));
  for (const name of ["vcpus", "memory_mb"]) if (q.quota[name]) parts.push(used(name, q.quota[name]));
  return parts.join(", ") + (q.cohort ? ` · cohort ${q.cohort}` : "");
}

function renderQueues() {
  const stats = list.stats;
  if (!stats) return;
  const rows = Object.entries(stats.queues).map(([name, q]) => {
    const cap = q.worker_cap < 0 ? "unlimited" : q.worker_cap;
    const gpus = q.resources_held ? q.resources_held.gpus : 0;
    return `<tr data-queue="${esc(name)}"><td>${esc(name)}</td><td>${q.queued}</td><td>${q.running}</td><td>${q.workers_running} / ${cap}</td><td>${gpus}</td><td class="quota">${esc(quotaText(q))}</td></tr>`;
  });
  const limit = stats.limits && stats.limits.max_concurrent_jobs;
  $("#queues-table").innerHTML = `<caption>${stats.total_queued} waiting, ${stats.running_jobs} running${limit ? ` · pool limit ${limit} concurrent jobs` : ""}</caption><thead><tr><th>queue</th><th>waiting</th><th>running</th><th>workers used / cap</th><th>GPUs held</th><th>quota used / nominal</th></tr></thead><tbody>${rows.join("")}</tbody>`;
  const select = $("#jobs-queue");
  const names = ["", ...Object.keys(stats.queues)];
  if (Array.from(select.options).map((o) => o.value).join() !== names.join()) {
    const current = select.value;
    select.innerHTML = names.map((n) => `<option value="${esc(n)}">${n ? esc(n) : "any"}</option>`).join("");
    select.value = names.includes(current) ? current : "";
  }
}

function reasonText(job) {
  return job.reason ? `${job.reason.code}: ${job.reason.message}` : "";
}

function sortValue(job, key) {
  if (key === "reason") return reasonText(job);
  const v = job[key];
  return v === null || v === undefined ? "" : v;
}

function renderJobs() {
  const text = $("#jobs-filter").value.trim().toLowerCase();
  const status = $("#jobs-status").value;
  const queue = $("#jobs-queue").value;
  let rows = list.jobs.filter((j) => (!status || j.status === status) && (!queue || j.queue === queue));
  if (text) {
    rows = rows.filter((j) => [j.name, j.job_id, j.queue, j.status, reasonText(j)].some((v) => String(v || "").toLowerCase().includes(text)));
  }
  const { key, dir } = list.sort;
  rows.sort((a, b) => {
    const x = sortValue(a, key), y = sortValue(b, key);
    return (x < y ? -1 : x > y ? 1 : 0) * dir || (a.seq - b.seq) * dir;
  });
  const pages = Math.max(1, Math.ceil(rows.length / PAGE_SIZE));
  list.page = Math.min(list.page, pages - 1);
  const shown = rows.slice(list.page * PAGE_SIZE, (list.page + 1) * PAGE_SIZE);
  const head = COLUMNS.map(([k, label]) => `<th data-key="${k}"${k === key ? ` aria-sort="${dir > 0 ? "ascending" : "descending"}"` : ""}>${label}</th>`).join("");
  const body = shown.map((j) => `<tr data-job="${esc(j.job_id)}" data-status="${esc(j.status)}"><td><a href="#job=${esc(j.job_id)}">${esc(j.name || j.job_id.slice(0, 8))}</a></td><td><span class="badge st-${esc(j.status)}">${esc(j.status)}</span></td><td>${esc(j.queue)}</td><td>${j.priority}</td><td>${j.queue_position ?? ""}</td><td>${j.workers}</td><td class="reason">${esc(reasonText(j))}</td><td>${esc(fmtTime(j.created_at))}</td><td>${esc(fmtTime(j.start_time))}</td></tr>`);
  $("#jobs-table").innerHTML = `<thead><tr>${head}</tr></thead><tbody>${body.join("") || '<tr><td colspan="9" class="hint">no jobs</td></tr>'}</tbody>`;
  $("#jobs-page").textContent = `page ${list.page + 1} of ${pages} · ${rows.length} jobs`;
  $("#jobs-prev").disabled = list.page === 0;
  $("#jobs-next").disabled = list.page >= pages - 1;
}

// ------------------------------------------------------------------ job detail
const detail = { id: null, job: null, logOffset: 0, logTimer: null, logDone: false };

export function showJob(id) {
  if (detail.id !== id) {
    hideJob();
    detail.id = id;
    detail.logOffset = 0;
    detail.logDone = false;
    $("#job-logs").textContent = "";
    $("#job-title").textContent = `Job ${id}`;
    say("#job-message", "");
  }
  loadDetail();
  pollLogs();
}

export function hideJob() {
  clearTimeout(detail.logTimer);
  detail.id = null;
  detail.job = null;
}

const loadDetail = debounce(async () => {
  const id = detail.id;
  if (!id) return;
  let job, history;
  try {
    [job, history] = await Promise.all([api(`/jobs/${encodeURIComponent(id)}`), api(`/jobs/${encodeURIComponent(id)}/statuses`)]);
  } catch (err) {
    say("#job-message", errorText(err), "error");
    return;
  }
  if (detail.id !== id) return;
  detail.job = job;
  renderDetail(job, history);
}, 100);

function fields(target, pairs) {
  $(target).innerHTML = pairs.filter(([, v]) => v !== null && v !== undefined && v !== "")
    .map(([k, v]) => `<dt>${esc(k)}</dt><dd data-field="${esc(k)}">${esc(v)}</dd>`).join("") || '<dd class="hint">none yet</dd>';
}

function renderDetail(job, history) {
  $("#job-title").innerHTML = `${esc(job.name || job.job_id)} <span class="badge st-${esc(job.status)}" id="job-status">${esc(job.status)}</span>`;
  fields("#job-fields", [
    ["job id", job.job_id], ["account", job.account], ["user", job.user], ["queue", job.queue], ["priority", job.priority], ["position in queue", job.queue_position],
    ["why it waits", reasonText(job)], ["estimated start", fmtTime(job.estimated_start)], ["scheduler job id", job.scheduler_job_id], ["adapter", job.adapter],
    ["submitted", fmtTime(job.created_at)], ["started", fmtTime(job.start_time)], ["ended", fmtTime(job.end_time)],
    ["return code", job.return_code], ["failed because", job.failed_reason],
    ["command", job.config ? job.config.command.join(" ") : ""],
  ]);
  const placements = job.allocation || [];
  $("#job-allocation").innerHTML = placements.length
    ? `<thead><tr><th>worker</th><th>cluster</th><th>node</th><th>GPUs</th></tr></thead><tbody>${placements.map((p, i) => `<tr><td>${i}</td><td>${esc(p.cluster_id)}</td><td>${esc(p.node_id || "")}</td><td>${esc((p.gpus || []).join(", "))}</td></tr>`).join("")}</tbody>`
    : '<tbody><tr><td class="hint">not placed yet</td></tr></tbody>';
  fields("#job-usage", Object.entries(job.resource_usage || {}).map(([k, v]) => [k, typeof v === "object" ? JSON.stringify(v) : v]));
  $("#job-timeline").innerHTML = history.map((h) => `<li data-status="${esc(h.status)}"><b>${esc(h.status)}</b> <time>${esc(fmtTime(h.time))}</time>${h.reason ? ` — ${esc(h.reason)}` : ""}</li>`).join("");
  $("#job-decision").innerHTML = decisionHtml(job.decision);
  const active = !["completed", "failed", "cancelled"].includes(job.status);
  $("#job-cancel").hidden = !(mayChange(job) && active);
  $("#job-priority-box").hidden = !(mayChange(job) && job.status === "queued");
  if (document.activeElement !== $("#job-priority")) $("#job-priority").value = job.priority;
  if (!detail.logTimer && !detail.logDone) pollLogs();
}

/** The decision record: counts, rejected nodes with reasons, top scores (shared with the playground). */
export function decisionHtml(decision, limit = 60) {
  if (!decision) return '<p class="hint">No decision record (the job has not been placed, or was placed before decisions were kept).</p>';
  const parts = [`<p>Policy <code>${esc(decision.policy_rule_uri || "")}</code>: ${decision.candidate_nodes ?? "?"} candidate nodes, ${decision.feasible_nodes ?? "?"} feasible.</p>`];
  const summary = decision.rejection_summary || {};
  if (Object.keys(summary).length) {
    parts.push(`<p>Rejections by kind: ${Object.entries(summary).map(([k, n]) => `<code>${esc(k)}</code> ${n}`).join(", ")}</p>`);
  }
  const rejected = decision.rejected || decision.rejections || [];
  if (rejected.length) {
    const rows = rejected.slice(0, limit).map((r) => `<tr><td>${esc(r.cluster_id)}</td><td>${esc(r.node_id || "")}</td><td>${esc((r.reasons || []).join("; "))}</td></tr>`);
    parts.push(`<div class="table-wrap"><table class="rejected"><caption>Rejected nodes (${rejected.length}${rejected.length > limit ? `, first ${limit} shown` : ""})</caption><thead><tr><th>cluster</th><th>node</th><th>reasons</th></tr></thead><tbody>${rows.join("")}</tbody></table></div>`);
  }
  const scores = decision.top_scores || [];
  if (scores.length) {
    parts.push(`<div class="table-wrap"><table class="scores"><caption>Top scores</caption><thead><tr><th>cluster</th><th>node</th><th>score</th></tr></thead><tbody>${scores.map((s) => `<tr><td>${esc(s.cluster_id)}</td><td>${esc(s.node_id || "")}</td><td>${esc(s.score)}</td></tr>`).join("")}</tbody></table></div>`);
  }
  if (decision.timings_ms) parts.push(`<p class="hint">Timings (ms): ${esc(Object.entries(decision.timings_ms).map(([k, v]) => `${k} ${v}`).join(", "))}</p>`);
  parts.push(`<details><summary>raw record</summary><pre>${esc(pretty(decision))}</pre></details>`);
  return parts.join("");
}

async function pollLogs() {
  clearTimeout(detail.logTimer);
  detail.logTimer = null;
  const id = detail.id;
  if (!id || detail.logDone) return;
  try {
    const response = await api(`/jobs/${encodeURIComponent(id)}/logs`, { raw: true, headers: { Range: `bytes=${detail.logOffset}-` } });
    if (detail.id !== id) return;
    if (response.ok) {
      const text = await response.text();
      const next = response.headers.get("X-Log-Offset");
      if (next !== null) detail.logOffset = Number(next);
      const pre = $("#job-logs");
      if (text) {
        const stick = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
        pre.textContent = (pre.textContent + text).slice(-MAX_LOG_CHARS);
        if (stick) pre.scrollTop = pre.scrollHeight;
      }
      detail.logDone = response.headers.get("X-Log-Complete") === "true";
      $("#job-log-state").textContent = detail.logDone ? "(complete)" : "(live tail)";
    }
  } catch {
    // offline: try again on the next tick
  }
  if (detail.id === id && !detail.logDone) detail.logTimer = setTimeout(pollLogs, LOG_POLL_MS);
}

async function cancelJob() {
  if (!detail.id) return;
  try {
    await api(`/jobs/${encodeURIComponent(detail.id)}/cancel`, { method: "POST" });
    say("#job-message", "Cancel requested.", "ok");
  } catch (err) {
    say("#job-message", errorText(err), "error");
  }
  loadDetail();
}

async function setPriority() {
  const value = Number($("#job-priority").value);
  if (!Number.isInteger(value)) {
    say("#job-message", "The priority must be a whole number (higher runs first).", "error");
    return;
  }
  try {
    await api(`/jobs/${encodeURIComponent(detail.id)}/priority`, { method: "POST", body: { priority: value } });
    say("#job-message", `Priority set to ${value}.`, "ok");
  } catch (err) {
    say("#job-message", errorText(err), "error");
  }
  loadDetail();
}
