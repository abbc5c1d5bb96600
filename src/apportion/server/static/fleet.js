// Fleet page (GPU cells coloured by state) and the utilisation plot, both fed by GET /fleet:
// fetched at start, after every event that can change a GPU's state, and at least every 5 s.
import { $, api, debounce, esc, on } from "./core.js";

const POLL_MS = 5000;
const MAX_SAMPLES = 720; // an hour at one sample per 5 s
const STATE_WORDS = {
  free: "free",
  held: "held by an allocation",
  job: "running a job",
  busy: "busy by metrics",
  stale: "stale metrics",
};

let snapshot = null;
const filters = { cluster: "", model: "", label: "" };
const series = { clusters: [], times: [], values: {} }; // values[cluster] = {held: [], busy: []}
let plot = null;

async function refresh() {
  try {
    snapshot = await api("/fleet");
  } catch {
    return; // offline: the next event or poll tries again
  }
  sample(snapshot);
  renderFleet();
  renderUtilisation();
}

const soon = debounce(refresh, 250);

export function startFleet() {
  for (const type of ["metrics_updated", "cluster_updated", "allocation_decided", "allocation_released",
    "job_scheduled", "job_started", "job_completed", "dashboard_resynced"]) {
    on(type, soon);
  }
  $("#fleet-cluster").addEventListener("change", (e) => { filters.cluster = e.target.value; renderFleet(); });
  $("#fleet-model").addEventListener("change", (e) => { filters.model = e.target.value; renderFleet(); });
  $("#fleet-label").addEventListener("input", (e) => { filters.label = e.target.value.trim(); renderFleet(); });
  $("#fleet-grid").addEventListener("mouseover", (e) => {
    const cell = e.target.closest(".gpu");
    if (cell) $("#fleet-detail").textContent = cell.title;
  });
  refresh();
  setInterval(refresh, POLL_MS);
}

// ------------------------------------------------------------------ fleet page
function labelMatches(labels) {
  const wanted = filters.label;
  if (!wanted) return true;
  const [key, value] = wanted.includes("=") ? wanted.split("=", 2).map((s) => s.trim()) : [null, null];
  return Object.entries(labels || {}).some(([k, v]) =>
    key !== null ? k === key && String(v) === value : k.includes(wanted) || String(v).includes(wanted));
}

function setOptions(select, values) {
  const current = select.value;
  const wanted = ["", ...values];
  const have = Array.from(select.options).map((o) => o.value);
  if (have.join("\n") === wanted.join("\n")) return;
  select.innerHTML = wanted.map((v) => `<option value="${esc(v)}">${v ? esc(v) : "all"}</option>`).join("");
  select.value = wanted.includes(current) ? current : "";
}

function gpuTitle(cluster, node, gpu) {
  const [index, model, memory, state, util, free, holder] = gpu;
  const parts = [`${cluster.id} / ${node.id} / GPU ${index}`, `${model}, ${memory} MB`, STATE_WORDS[state] || state];
  parts.push(util === null ? "no live utilisation" : `utilisation ${util}%`);
  if (free !== null) parts.push(`free memory ${free} MB`);
  if (holder) parts.push(`${state === "job" ? "job" : "allocation"} ${holder}`);
  return parts.join(" · ");
}

function renderFleet() {
  if (!snapshot) return;
  const models = new Set();
  for (const c of snapshot.clusters) for (const n of c.nodes) for (const g of n.gpus) models.add(g[1]);
  setOptions($("#fleet-cluster"), snapshot.clusters.map((c) => c.id));
  setOptions($("#fleet-model"), [...models].sort());
  const counts = { free: 0, held: 0, job: 0, busy: 0, stale: 0 };
  const html = [];
  for (const cluster of snapshot.clusters) {
    if (filters.cluster && cluster.id !== filters.cluster) continue;
    const nodes = [];
    for (const node of cluster.nodes) {
      if (!labelMatches(node.labels)) continue;
      const gpus = node.gpus.filter((g) => !filters.model || g[1] === filters.model);
      if (!gpus.length) continue;
      const cells = gpus.map((g) => {
        counts[g[3]] += 1;
        const holder = g[6] ? ` data-holder="${esc(g[6])}"` : "";
        return `<span class="gpu s-${esc(g[3])}" data-state="${esc(g[3])}"${holder} title="${esc(gpuTitle(cluster, node, g))}"></span>`;
      });
      const labels = Object.entries(node.labels || {}).map(([k, v]) => `${k}=${v}`).join(" ");
      nodes.push(`<div class="node" data-node="${esc(node.id)}"><div class="node-id" title="${esc(labels)}">${esc(node.id)}</div><div class="gpus">${cells.join("")}</div></div>`);
    }
    if (!nodes.length) continue;
    const c = cluster.counts;
    const stale = cluster.metrics_stale ? ' <span class="badge s-stale">metrics stale</span>' : "";
    html.push(`<div class="cluster" data-cluster="${esc(cluster.id)}"><h2>${esc(cluster.id)} <small>${esc(cluster.region || "")} · ${c.gpus} GPUs · ${c.free} free · ${c.held + c.job} held · ${c.busy} busy</small>${stale}</h2><div class="nodes">${nodes.join("")}</div></div>`);
  }
  $("#fleet-grid").innerHTML = html.join("") || '<p class="hint">No GPU matches these filters.</p>';
  for (const [state, n] of Object.entries(counts)) {
    const node = document.querySelector(`#fleet-legend [data-count="${state}"]`);
    if (node) node.textContent = n;
  }
}

// ------------------------------------------------------------------ utilisation
function sample(snap) {
  const ids = snap.clusters.map((c) => c.id);
  if (ids.join("\n") !== series.clusters.join("\n")) {
    series.clusters = ids;
    series.times = [];
    series.values = Object.fromEntries(ids.map((id) => [id, { held: [], busy: [] }]));
    if (plot) { plot.destroy(); plot = null; }
  }
  series.times.push(Date.now() / 1000);
  for (const c of snap.clusters) {
    series.values[c.id].held.push(c.counts.held + c.counts.job);
    series.values[c.id].busy.push(c.counts.busy);
  }
  if (series.times.length > MAX_SAMPLES) {
    series.times.shift();
    for (const v of Object.values(series.values)) { v.held.shift(); v.busy.shift(); }
  }
  $("#util-chart").dataset.samples = String(series.times.length);
}

const PALETTE = ["#3b6fd8", "#d8563b", "#2e9e5b", "#8e44ad", "#c49a00", "#16a2b8"];

function plotData() {
  const data = [series.times];
  for (const id of series.clusters) data.push(series.values[id].held, series.values[id].busy);
  return data;
}

function renderUtilisation() {
  const table = $("#util-table");
  if (snapshot) {
    const rows = snapshot.clusters.map((c) => `<tr><td>${esc(c.id)}</td><td>${c.counts.gpus}</td><td>${c.counts.held + c.counts.job}</td><td>${c.counts.job}</td><td>${c.counts.busy}</td><td>${c.counts.free}</td></tr>`);
    table.innerHTML = `<thead><tr><th>cluster</th><th>GPUs</th><th>held</th><th>of which jobs</th><th>busy</th><th>free</th></tr></thead><tbody>${rows.join("")}</tbody>`;
  }
  const box = $("#util-chart");
  if (box.offsetParent === null) return; // hidden: drawn when shown
  if (!plot) {
    const width = Math.max(280, box.clientWidth);
    const lines = [{}];
    series.clusters.forEach((id, i) => {
      const colour = PALETTE[i % PALETTE.length];
      lines.push({ label: `${id} held`, stroke: colour, width: 2 });
      lines.push({ label: `${id} busy`, stroke: colour, width: 1, dash: [6, 4] });
    });
    plot = new uPlot({ width, height: 320, series: lines, axes: [{}, { label: "GPUs" }], scales: { x: { time: true } } }, plotData(), box);
  } else {
    plot.setData(plotData());
  }
}

export function showUtilisation() {
  if (plot) plot.setSize({ width: Math.max(280, $("#util-chart").clientWidth), height: 320 });
  renderUtilisation();
}

window.addEventListener("resize", debounce(() => { if (plot && $("#util-chart").offsetParent) showUtilisation(); }, 200));
