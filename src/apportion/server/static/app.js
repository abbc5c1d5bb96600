// The dashboard's entry point: sign-in, the Socket.IO connection with gap-free resync, and the
// page router (#fleet, #utilisation, #jobs, #job=<id>, #playground, #policies, #events).
import { $, $$, api, ApiError, emit, errorText, say, session, setKey } from "./core.js";
import { startFleet, showUtilisation } from "./fleet.js";
import { startJobs, showJob, hideJob } from "./jobs.js";
import { startTools } from "./tools.js";

const INITIAL_EVENTS = 200; // how much history the events page shows at sign-in

// ------------------------------------------------------------------ sign-in
async function signInWithFragment() {
  const match = /^#login=([A-Za-z0-9_-]+)$/.exec(location.hash);
  if (!match) return;
  // drop the token from the address bar and history first: it works once anyway
  history.replaceState(null, "", location.pathname + location.search + "#fleet");
  try {
    const answer = await api("/auth/one-time", { method: "POST", body: { token: match[1] } });
    setKey(answer.api_key);
  } catch (err) {
    say("#signin-message", `The sign-in link did not work. ${errorText(err)}`, "error");
  }
}

async function whoami() {
  try {
    session.who = await api("/auth/whoami");
    return true;
  } catch (err) {
    session.who = null;
    if (err instanceof ApiError && err.status === 401) {
      if (session.key) say("#signin-message", "That key was refused: it is unknown, revoked or mistyped.", "error");
      setKey("");
      return false;
    }
    say("#signin-message", `The server did not answer: ${errorText(err)}`, "error");
    return false;
  }
}

function showSignIn() {
  $("#nav").hidden = true;
  $("#sign-out").hidden = true;
  $("#whoami").textContent = "";
  for (const page of $$(".page")) page.hidden = page.id !== "page-signin";
}

$("#signin-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  setKey($("#key-input").value.trim());
  $("#key-input").value = "";
  if (await whoami()) start();
});

$("#sign-out").addEventListener("click", () => {
  setKey("");
  location.hash = "";
  location.reload();
});

// ------------------------------------------------------------------ live events
// Every event carries a monotonic seq. `highWater` is the seq up to which we have everything;
// it only moves on a complete replay or on live events while in sync, so a reconnect asks for
// exactly what was missed. `seen` drops duplicates (a live event may repeat one of the replay).
const feed = { highWater: 0, synced: false, seen: new Set(), socket: null };

function handle(event, live) {
  if (!event || typeof event.seq !== "number" || feed.seen.has(event.seq)) return;
  feed.seen.add(event.seq);
  if (feed.seen.size > 20000) {
    for (const seq of feed.seen) if (seq < feed.highWater - 10000) feed.seen.delete(seq);
  }
  if (live && feed.synced) feed.highWater = Math.max(feed.highWater, event.seq);
  emit(event);
}

function setConnection(state, text) {
  const node = $("#conn");
  node.dataset.state = state;
  node.textContent = text;
}

function subscribe() {
  feed.socket.emit("subscribe", { since: feed.highWater });
}

function connect() {
  const socket = io({
    transports: ["websocket"],
    auth: (cb) => cb({ token: session.key }),
    reconnectionDelay: 300,
    reconnectionDelayMax: 2000,
  });
  feed.socket = socket;
  socket.on("connect", () => {
    feed.synced = false;
    setConnection("syncing", "resyncing…");
    subscribe();
  });
  socket.on("events_replay", (reply) => {
    let last = feed.highWater;
    for (const event of reply.events || []) {
      handle(event, false);
      last = Math.max(last, event.seq);
    }
    feed.highWater = last;
    if (reply.more) {
      subscribe();
      return;
    }
    feed.highWater = Math.max(feed.highWater, reply.latest_seq || 0);
    feed.synced = true;
    setConnection("live", "live");
    emit({ type: "dashboard_resynced", seq: null });
  });
  socket.on("disconnect", (reason) => {
    feed.synced = false;
    setConnection("offline", "reconnecting…");
    // a server that stops closes our socket itself; Socket.IO then waits for us to reconnect
    if (reason === "io server disconnect") setTimeout(() => socket.connect(), 500);
  });
  socket.on("connect_error", (err) => setConnection("offline", `reconnecting… (${err.message})`));
  socket.onAny((type, payload) => {
    if (type !== "events_replay") handle(payload, true);
  });
}

// ------------------------------------------------------------------ router
const PAGES = ["fleet", "utilisation", "jobs", "playground", "policies", "events"];

function route() {
  const hash = location.hash.replace(/^#/, "");
  const jobMatch = /^job=(.+)$/.exec(hash);
  const page = jobMatch ? "job" : PAGES.includes(hash) ? hash : "fleet";
  for (const section of $$(".page")) section.hidden = section.id !== `page-${page}`;
  for (const link of $$("#nav a")) {
    link.classList.toggle("active", link.dataset.page === page || (page === "job" && link.dataset.page === "jobs"));
  }
  if (jobMatch) showJob(decodeURIComponent(jobMatch[1]));
  else hideJob();
  if (page === "utilisation") showUtilisation();
  document.title = `Apportion · ${page}`;
}

// ------------------------------------------------------------------ start
let started = false;

async function start() {
  if (started) return;
  started = true;
  const who = session.who;
  $("#nav").hidden = false;
  $("#sign-out").hidden = !who.auth_enabled;
  $("#whoami").textContent = `${who.name} (${who.scope})`;
  document.body.dataset.scope = who.scope;
  try {
    const status = await api("/system/status");
    feed.highWater = Math.max(0, (status.latest_event_seq || 0) - INITIAL_EVENTS);
  } catch {
    feed.highWater = 0;
  }
  startFleet();
  startJobs();
  startTools();
  window.addEventListener("hashchange", route);
  route();
  connect();
}

async function boot() {
  await signInWithFragment();
  if (await whoami()) start();
  else showSignIn();
}

boot();
