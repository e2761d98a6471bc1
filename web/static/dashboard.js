// The operator dashboard: reads /admin/stream with the admin token and keeps the page in
// step with it, and posts chaos faults. Plain DOM, no framework, no build step.
//
// Rules this file keeps:
// - Server text reaches the page only through textContent and dataset, never as markup:
//   CallSids, outcome details and event details are data, not markup.
// - One card per live call, keyed by CallSid and updated in place; a cell is written only
//   when its text changes. With 200 calls and a snapshot every 0.5 s, re-rendering
//   everything would rebuild tens of thousands of nodes per tick and lose focus, hover
//   and scroll.
// - The token lives in sessionStorage (this tab, until it closes) and travels only in the
//   Authorization header: EventSource cannot send headers, and URLs end up in logs.

const TOKEN_KEY = "bridge.adminToken";
const FINISHED_SHOWN = 20; // the stream sends the latest 20 records
// Snapshots come every ~0.5 s: this long without one means the server or network stalled.
const STALE_AFTER_MS = 3000;
const RETRY_DELAYS_MS = [500, 1000, 2000, 5000];
// An event larger than this without its terminating blank line is a broken stream.
const MAX_PENDING_CHARS = 16 * 1024 * 1024;
// Known children first, in the supervisor's start order; others follow as they appear.
const CHILD_ORDER = ["twilio", "vapi", "codec", "vad"];
const DASH = "–";

class AuthError extends Error {}

const state = {
  token: null,
  connection: null, // AbortController of the running connection
  faults: new Map(), // actor → [fault], from /dashboard/faults
  cards: new Map(), // call_sid → Card
  finishedRows: new Map(), // call_sid → <tr>
  renderedOnce: false,
  lastSnapshotAt: 0,
  failures: 0,
  snapshots: 0,
};

const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------- formatting

function text(value) {
  return value === null || value === undefined || value === "" ? DASH : String(value);
}

function isNumber(value) {
  return typeof value === "number" && Number.isFinite(value);
}

function ms(value) {
  if (!isNumber(value)) return DASH;
  return `${value < 10 ? value.toFixed(1) : Math.round(value)} ms`;
}

function duration(seconds) {
  if (!isNumber(seconds)) return DASH;
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) return `${s} s`;
  const pad = (n) => String(n).padStart(2, "0");
  if (s < 3600) return `${Math.floor(s / 60)} m ${pad(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${pad(Math.floor((s % 3600) / 60))} m`;
}

function clock(unixSeconds) {
  if (!isNumber(unixSeconds)) return DASH;
  return new Date(unixSeconds * 1000).toLocaleTimeString([], { hour12: false });
}

// Writes only on change: unchanged cells cost a comparison, not a layout.
function setText(element, value) {
  if (element.textContent !== value) element.textContent = value;
}

function setData(element, key, value) {
  if (element.dataset[key] !== value) element.dataset[key] = value;
}

function make(tag, className, content) {
  const element = document.createElement(tag);
  if (className) element.className = className;
  if (content !== undefined) element.textContent = content;
  return element;
}

function fromTemplate(id) {
  return $(id).content.firstElementChild.cloneNode(true);
}

// ---------------------------------------------------------------- live calls

function faultButtons(container, callSid, actor) {
  for (const fault of state.faults.get(actor) ?? []) {
    const button = make("button", "fault", fault);
    button.type = "button";
    button.dataset.call = callSid;
    button.dataset.actor = actor;
    button.dataset.fault = fault;
    button.title = `Inject "${fault}" into ${actor}`;
    container.append(button);
  }
}

class Card {
  constructor(callSid) {
    this.callSid = callSid;
    this.root = fromTemplate("call-template");
    this.root.dataset.call = callSid;
    this.fields = {};
    for (const element of this.root.querySelectorAll("[data-field]")) {
      this.fields[element.dataset.field] = element;
    }
    this.supervisorRestarts = this.root.querySelector('[data-actor-restarts="supervisor"]');
    this.children = this.root.querySelector(".children");
    this.events = this.root.querySelector(".events");
    this.actors = new Map(); // actor → {state, restarts}
    this.eventsKey = "";
    this.trouble = false;
    setText(this.fields.call_sid, callSid);
    faultButtons(this.root.querySelector('[data-faults-for="supervisor"]'), callSid, "supervisor");
    for (const actor of CHILD_ORDER) this.addActor(actor);
  }

  addActor(actor) {
    const row = fromTemplate("actor-template");
    row.dataset.actorNode = actor;
    row.querySelector(".name").textContent = actor;
    const badge = row.querySelector(".badge");
    badge.dataset.actorState = actor;
    const restarts = row.querySelector(".restarts b");
    restarts.dataset.actorRestarts = actor;
    faultButtons(row.querySelector(".faults"), this.callSid, actor);
    this.children.append(row);
    const cells = { badge, restarts };
    this.actors.set(actor, cells);
    return cells;
  }

  update(snap, nowSeconds) {
    const f = this.fields;
    setText(f.age, isNumber(snap.started_at) ? duration(nowSeconds - snap.started_at) : DASH);
    setText(f.node, text(snap.node));
    const latency = snap.latency ?? {};
    setText(f.bridge_in_ms, ms(latency.bridge_in_ms));
    setText(f.bridge_out_ms, ms(latency.bridge_out_ms));
    setText(f.turn_ms, ms(latency.turn_ms));
    setText(f.turns, text(snap.turns));
    setText(f.barge_ins, text(snap.barge_ins));
    setText(f.vapi_links, text(snap.vapi_links));
    setText(f.resumes, text(snap.resumes));
    f.moving.hidden = snap.moving !== true;

    const sup = snap.supervisor ?? {};
    setText(f.strategy, text(sup.strategy));
    setText(f.intensity, `gives up after ${text(sup.intensity)} child restarts in ${text(sup.period_s)} s`);
    setText(this.supervisorRestarts, text(sup.restarts));
    let trouble = isNumber(sup.restarts) && sup.restarts > 0;

    const actors = snap.actors && typeof snap.actors === "object" ? snap.actors : {};
    for (const actor of Object.keys(actors)) {
      if (!this.actors.has(actor)) this.addActor(actor);
    }
    for (const [actor, cells] of this.actors) {
      const info = actors[actor] ?? {};
      const actorState = typeof info.state === "string" ? info.state : "unknown";
      setText(cells.badge, actorState === "unknown" ? DASH : actorState);
      setData(cells.badge, "state", actorState);
      setText(cells.restarts, text(info.restarts));
      trouble ||= actorState !== "running" || (isNumber(info.restarts) && info.restarts > 0);
    }
    this.trouble = trouble;
    this.root.classList.toggle("trouble", trouble);
    this.updateEvents(Array.isArray(snap.events) ? snap.events : []);
  }

  updateEvents(events) {
    // Events only ever append (the server keeps the latest 20), so the count and the
    // newest one tell whether anything changed.
    const last = events[events.length - 1];
    const key = last ? `${events.length}|${last.t}|${last.kind}|${last.detail}` : "0";
    if (key === this.eventsKey) return;
    this.eventsKey = key;
    const items = [];
    for (let i = events.length - 1; i >= 0; i -= 1) {
      const event = events[i] ?? {};
      const item = make("li", "event");
      item.dataset.kind = String(event.kind ?? "");
      item.append(
        make("time", "when", clock(event.t)),
        make("span", "kind", text(event.kind)),
        make("span", "detail", String(event.detail ?? "")),
      );
      items.push(item);
    }
    if (items.length === 0) items.push(make("li", "event none", "No events yet."));
    this.events.replaceChildren(...items);
  }

  chaosStatus(message, ok) {
    setText(this.fields.chaos_status, message);
    setData(this.fields.chaos_status, "ok", ok ? "yes" : "no");
  }
}

function filterMatches(card) {
  const wanted = $("filter").value.trim().toLowerCase();
  if (wanted && !card.callSid.toLowerCase().includes(wanted)) return false;
  return !$("only-trouble").checked || card.trouble;
}

function applyFilter() {
  let shown = 0;
  for (const card of state.cards.values()) {
    const visible = filterMatches(card);
    if (card.root.hidden === visible) card.root.hidden = !visible;
    if (visible) shown += 1;
  }
  const empty = $("live-empty");
  empty.hidden = shown > 0;
  setText(empty, state.cards.size === 0 ? "No live calls." : `None of the ${state.cards.size} live calls match the filter.`);
}

function renderLive(calls) {
  const nowSeconds = Date.now() / 1000;
  const snaps = new Map();
  for (const snap of calls) {
    if (snap && typeof snap.call_sid === "string") snaps.set(snap.call_sid, snap);
  }
  for (const [callSid, card] of state.cards) {
    if (!snaps.has(callSid)) {
      card.root.remove();
      state.cards.delete(callSid);
    }
  }
  // Oldest first: new calls join at the end, so the cards an operator is looking at do
  // not move down under the pointer every time a call arrives.
  const ordered = [...snaps.values()].sort((a, b) => (a.started_at ?? 0) - (b.started_at ?? 0));
  const container = $("live-calls");
  let cursor = container.firstElementChild;
  for (const snap of ordered) {
    let card = state.cards.get(snap.call_sid);
    if (card === undefined) {
      card = new Card(snap.call_sid);
      state.cards.set(snap.call_sid, card);
    }
    card.update(snap, nowSeconds);
    // Move a node only when it is out of place: steady state moves nothing.
    if (card.root === cursor) cursor = cursor.nextElementSibling;
    else container.insertBefore(card.root, cursor);
  }
  setText($("live-count"), String(state.cards.size));
  applyFilter();
}

// ---------------------------------------------------------------- finished calls

function restartsSummary(restarts) {
  if (!restarts || typeof restarts !== "object") return DASH;
  const nonZero = Object.entries(restarts).filter(([, n]) => isNumber(n) && n > 0);
  const total = nonZero.reduce((sum, [, n]) => sum + n, 0);
  if (total === 0) return "0";
  return `${total} (${nonZero.map(([actor, n]) => `${actor} ${n}`).join(", ")})`;
}

function finishedRow(record) {
  const row = document.createElement("tr");
  row.dataset.finishedCall = record.call_sid;
  const outcome = make("td", "outcome");
  const badge = make("span", "badge", text(record.outcome));
  badge.dataset.outcome = String(record.outcome ?? "");
  outcome.append(badge);
  if (record.outcome_detail) outcome.append(make("span", "detail", String(record.outcome_detail)));
  const sid = make("td");
  sid.append(make("code", "sid", text(record.call_sid)));
  const ended = make("td", "", clock(record.ended_at));
  if (isNumber(record.ended_at)) ended.title = new Date(record.ended_at * 1000).toString();
  row.append(
    sid,
    ended,
    make("td", "num", duration(record.duration_s)),
    outcome,
    make("td", "", restartsSummary(record.restarts)),
    make("td", "num", text(record.turns)),
    make("td", "num", `${ms(record.turn_latency_p50_ms)} / ${ms(record.turn_latency_p95_ms)}`),
    make("td", "num", text(record.barge_ins)),
    make("td", "num", text(record.vapi_links)),
    make("td", "num", `${text(record.frames_in)} / ${text(record.frames_out)} / ${text(record.frames_dropped)}`),
    make("td", "num", isNumber(record.cost_usd) ? `$${record.cost_usd.toFixed(4)}` : DASH),
  );
  return row;
}

function renderFinished(records) {
  const wanted = records.filter((r) => r && typeof r.call_sid === "string").slice(0, FINISHED_SHOWN);
  const keep = new Set(wanted.map((r) => r.call_sid));
  for (const [callSid, row] of state.finishedRows) {
    if (!keep.has(callSid)) {
      row.remove();
      state.finishedRows.delete(callSid);
    }
  }
  const body = $("finished-rows");
  let cursor = body.firstElementChild;
  for (const record of wanted) {
    let row = state.finishedRows.get(record.call_sid);
    if (row === undefined) {
      // A record never changes once written, so a row is built once.
      row = finishedRow(record);
      if (state.renderedOnce) row.classList.add("fresh");
      state.finishedRows.set(record.call_sid, row);
    }
    if (row === cursor) cursor = cursor.nextElementSibling;
    else body.insertBefore(row, cursor);
  }
  setText($("finished-count"), String(state.finishedRows.size));
  $("finished-empty").hidden = state.finishedRows.size > 0;
  $("finished-table").hidden = state.finishedRows.size === 0;
}

function applySnapshot(snapshot) {
  const started = performance.now();
  if (Array.isArray(snapshot.calls)) renderLive(snapshot.calls);
  if (Array.isArray(snapshot.finished)) renderFinished(snapshot.finished);
  state.renderedOnce = true;
  state.lastSnapshotAt = Date.now();
  state.failures = 0;
  // For tests and for a curious operator's devtools: how many updates, what the last cost.
  state.snapshots += 1;
  document.documentElement.dataset.snapshots = String(state.snapshots);
  document.documentElement.dataset.renderMs = (performance.now() - started).toFixed(1);
}

// ---------------------------------------------------------------- talking to the server

function authHeaders() {
  return { Authorization: `Bearer ${state.token}` };
}

async function checked(response) {
  if (response.status === 401) throw new AuthError("token rejected");
  if (!response.ok) throw new Error(`HTTP ${response.status} from ${new URL(response.url).pathname}`);
  return response;
}

function sleep(delayMs, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, delayMs);
    signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
  });
}

// Server-sent events by hand: fetch can send the Authorization header, EventSource cannot.
// Returns when the server closes the stream; throws on an HTTP error or a broken stream.
async function readStream(signal) {
  const response = await fetch("/admin/stream", {
    headers: { ...authHeaders(), Accept: "text/event-stream" },
    cache: "no-store",
    signal,
  });
  await checked(response);
  connected();
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let pending = "";
  let carry = ""; // a chunk ending in "\r" may be half of a "\r\n"
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    let chunk = carry + value;
    carry = chunk.endsWith("\r") ? "\r" : "";
    if (carry) chunk = chunk.slice(0, -1);
    pending += chunk.replace(/\r\n?/g, "\n");
    let end;
    while ((end = pending.indexOf("\n\n")) >= 0) {
      const block = pending.slice(0, end);
      pending = pending.slice(end + 2);
      onServerEvent(block);
    }
    if (pending.length > MAX_PENDING_CHARS) throw new Error("stream event too large");
  }
}

function onServerEvent(block) {
  let name = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith(":")) continue; // a comment: keep-alive
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") name = value;
    else if (field === "data") data.push(value);
  }
  if (name !== "snapshot" || data.length === 0) return;
  applySnapshot(JSON.parse(data.join("\n")));
}

async function connect() {
  const controller = new AbortController();
  state.connection = controller;
  const { signal } = controller;
  while (!signal.aborted) {
    let problem = "the stream ended";
    try {
      setConnection("connecting", "connecting…");
      await readStream(signal);
    } catch (error) {
      if (signal.aborted) return;
      if (error instanceof AuthError) {
        askForToken("The server rejected that token. Enter it again.");
        return;
      }
      problem = error.message;
    }
    if (signal.aborted) return;
    const delay = RETRY_DELAYS_MS[Math.min(state.failures, RETRY_DELAYS_MS.length - 1)];
    state.failures += 1;
    setConnection("retrying", `${problem}; retrying in ${delay / 1000} s`);
    await sleep(delay, signal);
  }
}

async function injectFault(button) {
  const { call, actor, fault } = button.dataset;
  const card = state.cards.get(call);
  button.disabled = true;
  try {
    const response = await fetch(`/admin/calls/${encodeURIComponent(call)}/chaos`, {
      method: "POST",
      headers: { ...authHeaders(), "Content-Type": "application/json" },
      body: JSON.stringify({ actor, fault }),
      cache: "no-store",
    });
    if (response.status === 401) {
      askForToken("The server rejected that token. Enter it again.");
      return;
    }
    if (response.status === 202) {
      card?.chaosStatus(`${actor}/${fault} injected at ${clock(Date.now() / 1000)}`, true);
    } else {
      const body = await response.json().catch(() => ({}));
      card?.chaosStatus(`${actor}/${fault} refused (${response.status}): ${body.error ?? response.statusText}`, false);
    }
  } catch (error) {
    card?.chaosStatus(`${actor}/${fault} failed: ${error.message}`, false);
  } finally {
    button.disabled = false;
  }
}

// ---------------------------------------------------------------- page state

function setConnection(kind, label) {
  const element = $("connection");
  setData(element, "state", kind);
  setText(element, label);
}

function connected() {
  state.lastSnapshotAt = Date.now(); // staleness counts from here until the first snapshot
  setConnection("live", "live");
}

function watchStaleness() {
  setInterval(() => {
    const element = $("connection");
    if (element.dataset.state !== "live" && element.dataset.state !== "stale") return;
    const age = Date.now() - state.lastSnapshotAt;
    if (age > STALE_AFTER_MS) setConnection("stale", `no update for ${Math.round(age / 1000)} s`);
    else if (element.dataset.state === "stale") setConnection("live", "live");
  }, 1000);
}

function clearBoard() {
  for (const card of state.cards.values()) card.root.remove();
  state.cards.clear();
  for (const row of state.finishedRows.values()) row.remove();
  state.finishedRows.clear();
  state.renderedOnce = false;
}

function stop() {
  state.connection?.abort();
  state.connection = null;
}

function askForToken(message) {
  stop();
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = null;
  clearBoard();
  setConnection("idle", "not connected");
  $("board").hidden = true;
  $("sign-out").hidden = true;
  $("login").hidden = false;
  const error = $("login-error");
  error.hidden = !message;
  error.textContent = message ?? "";
  $("token").focus();
}

function start(token) {
  state.token = token;
  $("login").hidden = true;
  $("board").hidden = false;
  $("sign-out").hidden = false;
  connect();
}

async function loadFaults() {
  try {
    const response = await checked(await fetch("/dashboard/faults", { cache: "no-store" }));
    for (const [actor, fault] of (await response.json()).pairs) {
      if (!state.faults.has(actor)) state.faults.set(actor, []);
      state.faults.get(actor).push(fault);
    }
  } catch (error) {
    const problem = $("problem");
    problem.textContent = `Could not load the list of chaos faults (${error.message}); reload to get the chaos buttons.`;
    problem.hidden = false;
  }
}

async function main() {
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("token").value.trim();
    if (!token) return;
    $("token").value = "";
    sessionStorage.setItem(TOKEN_KEY, token);
    start(token);
  });
  $("sign-out").addEventListener("click", () => askForToken());
  $("filter").addEventListener("input", applyFilter);
  $("only-trouble").addEventListener("change", applyFilter);
  // One listener for every chaos button of every card, present and future.
  $("live-calls").addEventListener("click", (event) => {
    const button = event.target.closest("button[data-fault]");
    if (button) injectFault(button);
  });
  watchStaleness();
  await loadFaults();
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) start(token);
  else askForToken();
}

main();
