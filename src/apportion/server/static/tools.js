// Allocation playground, policies, and the live event stream.
import { $, api, can, debounce, errorText, esc, fmtTime, mayChange, on, parseJsonField, pretty, say } from "./core.js";
import { decisionHtml } from "./jobs.js";

const MAX_EVENT_ROWS = 1000;

export function startTools() {
  startPlayground();
  startPolicies();
  startEvents();
}

// ------------------------------------------------------------------ playground
function request(adhoc) {
  const clusters = $("#pg-clusters").value.split(",").map((s) => s.trim()).filter(Boolean);
  const body = {
    adhoc,
    policy_rule_uri: $("#pg-policy").value,
    clusters,
    inputs: parseJsonField($("#pg-inputs").value, "Inputs"),
    filter: parseJsonField($("#pg-filter").value, "Filter"),
    search: {},
    parameters: parseJsonField($("#pg-parameters").value, "Parameters"),
    settings: {},
    request_id: `dashboard-${Date.now()}`,
    explain: true,
  };
  if (!adhoc) body.lease_seconds = Number($("#pg-lease").value) || 60;
  return body;
}

async function ask(adhoc) {
  let body;
  try {
    body = request(adhoc);
  } catch (err) {
    say("#pg-message", err.message, "error");
    return;
  }
  say("#pg-message", "asking…");
  let answer;
  try {
    answer = await api("/allocate", { method: "POST", body, allowError: true });
  } catch (err) {
    say("#pg-message", errorText(err), "error");
    return;
  }
  renderAnswer(answer);
  if (answer.allocation_id) refreshHolds();
}

function renderAnswer(answer) {
  const box = $("#pg-answer");
  if (answer && answer.success) {
    const d = answer.data || {};
    const placements = Array.isArray(d) ? d : [d];
    say("#pg-message", answer.allocation_id ? `Held as ${answer.allocation_id}.` : "Answered (nothing held).", "ok");
    const rows = placements.map((p) => `<tr><td>${esc(p.cluster_id)}</td><td>${esc(p.node_id || "")}</td><td>${esc((p.gpus || []).join(", "))}</td></tr>`);
    box.innerHTML = `<h2>Answer</h2><div class="table-wrap"><table id="pg-placement"><thead><tr><th>cluster</th><th>node</th><th>GPUs</th></tr></thead><tbody>${rows.join("")}</tbody></table></div><h2>Decision</h2>${decisionHtml(answer.explain)}<details><summary>raw answer</summary><pre>${esc(pretty(answer))}</pre></details>`;
    return;
  }
  const error = (answer && answer.error) || {};
  say("#pg-message", `${error.code || "Error"}: ${(answer && answer.message) || "no answer"}`, "error");
  const details = error.details || {};
  const decision = details.rejections ? { ...details, rejected: details.rejections, policy_rule_uri: $("#pg-policy").value } : null;
  box.innerHTML = `<h2>No placement</h2><p class="message error" id="pg-error">${esc(answer && answer.message)}</p>${decision ? decisionHtml(decision) : ""}<details><summary>raw answer</summary><pre>${esc(pretty(answer))}</pre></details>`;
}

async function refreshHolds() {
  let holds;
  try {
    holds = (await api("/allocations")).data;
  } catch {
    return;
  }
  const mine = holds.filter((h) => h.kind !== "job");
  const rows = mine.map((h) => `<tr data-allocation="${esc(h.allocation_id)}"><td><code>${esc(h.allocation_id)}</code></td><td>${esc(h.policy_rule_uri)}</td><td>${esc(h.placements.map((p) => `${p.cluster_id}/${p.node_id || ""} [${(p.gpus || []).join(",")}]`).join("; "))}</td><td>${esc(fmtTime(new Date(h.expires_at * 1000).toISOString()))}</td><td>${mayChange(h) ? `<button type="button" data-release="${esc(h.allocation_id)}">Release</button>` : ""}</td></tr>`);
  $("#pg-holds").innerHTML = `<thead><tr><th>allocation</th><th>policy</th><th>placements</th><th>lease ends</th><th></th></tr></thead><tbody>${rows.join("") || '<tr><td colspan="5" class="hint">none</td></tr>'}</tbody>`;
}

function startPlayground() {
  $("#pg-form").addEventListener("submit", (e) => { e.preventDefault(); ask(true); });
  $("#pg-hold").addEventListener("click", () => ask(false));
  $("#pg-hold").hidden = !can("submit");
  $("#pg-holds").addEventListener("click", async (e) => {
    const id = e.target.dataset && e.target.dataset.release;
    if (!id) return;
    try {
      await api(`/allocations/${encodeURIComponent(id)}`, { method: "DELETE" });
      say("#pg-message", `Released ${id}.`, "ok");
    } catch (err) {
      say("#pg-message", errorText(err), "error");
    }
    refreshHolds();
  });
  const soon = debounce(refreshHolds, 200);
  on("allocation_decided", soon);
  on("allocation_released", soon);
  refreshHolds();
}

// ------------------------------------------------------------------ policies
async function refreshPolicies() {
  let policies;
  try {
    policies = await api("/policies");
  } catch (err) {
    $("#policies-list").textContent = errorText(err);
    return;
  }
  const placement = policies.filter((p) => !(p.tags || []).includes("ranking"));
  for (const [select, items] of [[$("#pg-policy"), placement], [$("#policy-manage-uri"), policies]]) {
    const current = select.value;
    select.innerHTML = items.map((p) => `<option value="${esc(p.policy_rule_uri)}">${esc(p.policy_rule_uri)}</option>`).join("");
    if (items.some((p) => p.policy_rule_uri === current)) select.value = current;
  }
  const byName = new Map();
  for (const p of policies) {
    if (!byName.has(p.name)) byName.set(p.name, []);
    byName.get(p.name).push(p);
  }
  const blocks = [];
  for (const [name, versions] of [...byName.entries()].sort()) {
    const rows = versions.map((p) => `<details class="policy" data-uri="${esc(p.policy_rule_uri)}"><summary><code>${esc(p.policy_rule_uri)}</code> <span class="badge">${esc(p.source || "")}</span> ${esc(p.description || "")}</summary>${["policy_parameters", "policy_settings", "policy_parameters_schema", "policy_input_schema", "policy_output_schema", "management_commands_schema"].map((k) => `<h4>${esc(k)}</h4><pre>${esc(pretty(p[k] ?? {}))}</pre>`).join("")}</details>`);
    blocks.push(`<section class="policy-group"><h2>${esc(name)} <small>${versions.length} version${versions.length === 1 ? "" : "s"}</small></h2>${rows.join("")}</section>`);
  }
  $("#policies-list").innerHTML = blocks.join("");
}

function startPolicies() {
  $("#policy-admin").hidden = !can("policies");
  $("#policy-manage").hidden = !can("admin"); // a policy's management changes it for everyone
  $("#policy-upload").addEventListener("submit", async (e) => {
    e.preventDefault();
    const file = $("#policy-code").files[0];
    let record;
    try {
      record = parseJsonField($("#policy-record").value, "Record");
      if (!file) throw new Error("Choose the policy's code file (.py or an archive).");
    } catch (err) {
      say("#policy-upload-message", err.message, "error");
      return;
    }
    const form = new FormData();
    form.append("record", new Blob([JSON.stringify(record)], { type: "application/json" }), "record.json");
    form.append("code", file, file.name);
    try {
      const stored = await api("/policies", { method: "POST", form });
      say("#policy-upload-message", `Stored ${stored.policy_rule_uri}.`, "ok");
      refreshPolicies();
    } catch (err) {
      say("#policy-upload-message", errorText(err), "error");
    }
  });
  $("#policy-manage").addEventListener("submit", async (e) => {
    e.preventDefault();
    const out = $("#policy-manage-result");
    try {
      const data = parseJsonField($("#policy-manage-data").value, "Data");
      const uri = encodeURIComponent($("#policy-manage-uri").value);
      const answer = await api(`/policies/${uri}/management`, { method: "POST", body: { action: $("#policy-manage-action").value, data } });
      out.textContent = pretty(answer);
      out.className = "result ok";
    } catch (err) {
      out.textContent = errorText(err);
      out.className = "result error";
    }
  });
  on("policy_updated", debounce(refreshPolicies, 200));
  refreshPolicies();
}

// ------------------------------------------------------------------ events
const stream = { count: 0, last: 0 };

function summary(event) {
  const { type, seq, ts, ...rest } = event;
  const text = JSON.stringify(rest);
  return text.length > 240 ? `${text.slice(0, 240)}…` : text;
}

function startEvents() {
  const table = $("#events-table");
  table.innerHTML = "<thead><tr><th>seq</th><th>time</th><th>type</th><th>payload</th></tr></thead><tbody></tbody>";
  const body = table.tBodies[0];
  const filter = () => {
    const wanted = $("#events-filter").value.trim();
    for (const row of body.rows) row.hidden = !!wanted && !row.dataset.type.includes(wanted);
  };
  $("#events-filter").addEventListener("input", filter);
  on("*", (event) => {
    if (typeof event.seq !== "number") return;
    stream.count += 1;
    stream.last = Math.max(stream.last, event.seq);
    const row = document.createElement("tr");
    row.dataset.seq = event.seq;
    row.dataset.type = event.type;
    row.innerHTML = `<td>${event.seq}</td><td>${esc(fmtTime(event.ts))}</td><td><code>${esc(event.type)}</code></td><td class="payload">${esc(summary(event))}</td>`;
    const wanted = $("#events-filter").value.trim();
    row.hidden = !!wanted && !event.type.includes(wanted);
    // newest first; a replayed (older) event goes below the newer ones it precedes
    let before = body.firstChild;
    while (before && Number(before.dataset.seq) > event.seq) before = before.nextSibling;
    body.insertBefore(row, before);
    while (body.rows.length > MAX_EVENT_ROWS) body.deleteRow(body.rows.length - 1);
    $("#events-summary").textContent = `${stream.count} events received in this tab; newest seq ${stream.last}`;
  });
}
