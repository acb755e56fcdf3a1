// GreenScale dashboard. Plain browser JavaScript, no libraries. Everything that comes from
// users or models (prompts, answers, errors, names) is put on the page as text
// (textContent), never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
let apiKey = sessionStorage.getItem("greenscale-key") || "";
let overview = null;

// ---------- helpers ----------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("data-") || k.startsWith("aria-") || k === "role" || k === "scope") node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children) node.append(c instanceof Node ? c : String(c ?? ""));
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}

function secs(s, digits = 2) {
  if (s === null || s === undefined) return "–";
  if (s >= 120) return (s / 60).toFixed(1) + " min";
  return Number(s).toFixed(digits) + " s";
}

function between(a, b) {
  return a && b && b >= a ? secs((b - a) / 1000) : "–";
}

function ago(ms) {
  if (!ms) return "–";
  const s = Math.max(0, (Date.now() - ms) / 1000);
  return s < 60 ? `${s.toFixed(0)} s ago` : s < 3600 ? `${(s / 60).toFixed(0)} min ago` : `${(s / 3600).toFixed(1)} h ago`;
}

function money(x) {
  return Number(x).toFixed(x < 10 ? 4 : 2);
}

async function api(path, options = {}) {
  const headers = Object.assign({ "Content-Type": "application/json" }, options.headers || {});
  if (apiKey) headers.Authorization = "Bearer " + apiKey;
  const r = await fetch(path, Object.assign({}, options, { headers }));
  if (r.status === 401) {
    $("key-form").hidden = false;
    throw new Error("this gateway needs an API key");
  }
  if (!r.ok) {
    let message = r.status + " " + r.statusText;
    try { message = (await r.json()).error.message; } catch (_) { /* not JSON */ }
    throw new Error(message);
  }
  return r;
}

// Reads a server-sent event stream with fetch (so that the API key can be sent),
// calling onEvent(name, data) for each event. Resolves when the stream ends.
async function readEvents(path, onEvent, signal) {
  const r = await api(path, { signal, headers: { Accept: "text/event-stream" } });
  const reader = r.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) {
        if (onEvent(name, data.join("\n")) === false) return;
      }
    }
  }
}

// ---------- theme ----------

function applyTheme(theme) {
  document.documentElement.dataset.theme = theme;
  const dark = theme === "dark";
  $("theme").textContent = dark ? "Light theme" : "Dark theme";
  $("theme").setAttribute("aria-pressed", String(dark));
}

function initTheme() {
  const saved = localStorage.getItem("greenscale-theme");
  const prefersDark = window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches;
  applyTheme(saved || (prefersDark ? "dark" : "light"));
  $("theme").addEventListener("click", () => {
    const next = document.documentElement.dataset.theme === "dark" ? "light" : "dark";
    localStorage.setItem("greenscale-theme", next);
    applyTheme(next);
  });
}

// ---------- submit ----------

async function loadModels() {
  const models = (await (await api("/v1/models")).json()).data.map((m) => m.id);
  for (const id of ["model", "timeline-pool", "deploy-pool"]) {
    const select = $(id);
    const current = select.value;
    select.replaceChildren(...models.map((m) => el("option", { value: m }, m)));
    if (models.includes(current)) select.value = current;
  }
}

async function submitPrompt(event) {
  event.preventDefault();
  const prompt = $("prompt").value;
  const model = $("model").value || undefined;
  const answer = $("answer");
  const status = $("answer-status");
  const error = $("answer-error");
  $("answer-box").hidden = false;
  answer.textContent = "";
  error.textContent = "";
  $("send").disabled = true;
  status.textContent = "submitting…";
  try {
    const job = await (await api("/v1/jobs", {
      method: "POST",
      body: JSON.stringify({ prompt, model, stream: true }),
    })).json();
    status.textContent = `job ${job.id}: queued, waiting for a replica of ${job.model || model}…`;
    let finished = false;
    await readEvents(`/v1/jobs/${encodeURIComponent(job.id)}/events`, (name, data) => {
      const d = JSON.parse(data);
      if (name === "started") status.textContent = `job ${job.id}: running`;
      else if (name === "token") answer.textContent += d.text;
      else if (name === "finished" || name === "failed") {
        finished = true;
        if (d.result !== null && d.result !== undefined) answer.textContent = d.result;
        status.textContent = `job ${d.id}: ${d.status} — waited ${between(d.enqueued_at_ms, d.started_at_ms)}, ran ${between(d.started_at_ms, d.finished_at_ms)}` +
          (d.usage ? `, ${d.usage.completion_tokens} tokens` : "");
        if (name === "failed") error.textContent = `${d.status}: ${d.error_message || "no error message"}`;
        return false;
      } else if (name === "end") {
        finished = true;
        error.textContent = d.reason;
        return false;
      }
      return true;
    });
    if (!finished) error.textContent = "the event stream ended before the job finished; see the jobs table";
  } catch (e) {
    error.textContent = e.message;
    status.textContent = "";
  } finally {
    $("send").disabled = false;
    refreshJobs();
  }
}

// ---------- pools ----------

function stat(label, value, field) {
  return el("div", { class: "stat" },
    el("span", { class: "value", "data-field": field }, value),
    el("span", { class: "label" }, label));
}

function facts(pairs) {
  const dl = el("dl", { class: "facts" });
  for (const [k, v, field] of pairs) {
    dl.append(el("dt", {}, k), el("dd", field ? { "data-field": field } : {}, v));
  }
  return dl;
}

function poolCard(p, windowS) {
  const replicas = Array.isArray(p.replicas) ? p.replicas : null;
  const count = (s) => (replicas || []).filter((r) => r.state === s).length;
  const q = p.queue || {};
  const title = el("h3", {}, p.name);
  if (p.demo) title.append(el("span", { class: "badge demo" }, "demo model — not an LLM"));
  title.append(el("span", { class: "badge" }, p.kind === "command" ? "local servers" : p.kind === "remote" ? "remote API" : "workers"));

  const card = el("article", { class: "card pool", "data-pool": p.name, "aria-label": `pool ${p.name}` }, title);
  const total = replicas ? replicas.length : (q.live_workers || 0);
  card.append(el("div", { class: "stats" },
    stat(replicas ? "replicas" : "live workers", total, "replicas"),
    stat("pending", (q.pending || 0) + (q.delayed || 0), "pending"),
    stat("in flight", q.in_flight || 0, "in-flight"),
    stat("dead letter", q.dead_letter || 0, "dead-letter")));

  const rows = [];
  if (replicas) {
    const asleep = p.sleep_engine ? `, ${count("asleep")} asleep` : "";
    rows.push(["replicas by state", `${count("starting") + count("waking")} starting, ${count("ready")} ready, ${count("draining")} draining${asleep} (max ${p.max_replicas}, ${p.concurrency} jobs each)`, "replica-states"]);
    const d = p.last_decision;
    rows.push(["last decision", d ? `${d.current} → ${d.desired}: ${d.reason} (${ago(d.at_ms)})` : "none yet", "decision"]);
    rows.push(["policy", p.policy]);
    const c = p.cold_starts || {};
    rows.push(["cold starts", c.count ? `${c.count}; last ${secs(c.last_s)}, p50 ${secs(c.p50_s)}` : "none yet", "cold-starts"]);
    if (p.sleep_engine) {
      const w = p.wakes || {};
      const held = (p.replicas || []).map((r) => r.asleep_host_bytes).filter((b) => typeof b === "number");
      const host = held.length ? `; a sleeper holds ${size(Math.max(...held))} of host memory` : "";
      rows.push(["sleep", `${p.sleep_engine}: ${p.sleeps} sleeps, ${w.count || 0} wakes${w.count ? `, p50 ${secs(w.p50_s)}` : ""}${host}`, "sleep"]);
    }
    if (p.last_failure) rows.push(["last failure", `${p.last_failure} (${p.failures_in_a_row} in a row)`, "failure"]);
    if (p.gpu_need) {
      const each = p.gpu_need.memory_bytes ? size(p.gpu_need.memory_bytes) : "a whole GPU";
      const waiting = p.waiting_for_gpu_since_ms ? `; waiting for room ${ago(p.waiting_for_gpu_since_ms)}` : "";
      rows.push(["GPUs", `${p.gpu_need.devices} × ${each} per replica; evicted ${p.evicted} time(s) for other pools${waiting}`, "gpu"]);
    }
  }
  const t = p.timings || {};
  const pair = (x) => (x && x.n ? `p50 ${secs(x.p50_s)}, p95 ${secs(x.p95_s)}` : "–");
  const window = `last ${Math.round(windowS / 60)} min, ${t.jobs || 0} jobs`;
  rows.push([`wait (${window})`, pair(t.wait), "wait"]);
  rows.push(["run", pair(t.run), "run"]);
  rows.push(["first token", pair(t.ttft), "ttft"]);
  card.append(facts(rows));

  if (replicas && p.since_ms) {
    const hours = Math.max(0, (Date.now() - p.since_ms) / 3.6e6);
    const usedH = p.replica_seconds / 3600;
    const alwaysOnH = p.peak_replicas * hours;
    const savedH = alwaysOnH - usedH;
    const pct = alwaysOnH > 0 ? ` (${((savedH / alwaysOnH) * 100).toFixed(0)} %)` : "";
    const priced = typeof p.cost_per_hour === "number";
    const unit = p.currency ? ` ${p.currency}` : "";
    const cost = (h) => (priced ? `${money(h * p.cost_per_hour)}${unit}` : `${h.toFixed(3)} replica-h`);
    const rate = priced ? ` × ${p.cost_per_hour}${unit}/h` : "";
    const energy = [];
    if (p.energy) {
      const e = p.energy;
      const label = e.estimated ? " (estimated from the GPUs' board power)" : " (read from the GPUs' energy counters)";
      const co2 = (kwh) => (typeof e.grid_g_per_kwh === "number" ? `, ${(kwh * e.grid_g_per_kwh).toFixed(1)} gCO2e` : "");
      energy.push(["energy", `${e.kwh.toFixed(4)} kWh${co2(e.kwh)}${label}`, "energy-used"]);
      energy.push(["energy always on", `${e.always_on_kwh.toFixed(4)} kWh${co2(e.always_on_kwh)}${label}`, "energy-always-on"]);
      energy.push(["energy saving", `${(e.always_on_kwh - e.kwh).toFixed(4)} kWh${co2(e.always_on_kwh - e.kwh)}${label}`, "energy-saving"]);
    }
    card.append(el("div", { class: "cost" },
      facts([
        ["used", `${usedH.toFixed(3)} replica-h${rate}${priced ? ` = ${cost(usedH)}` : ""}`, "cost-used"],
        ["always on", `${p.peak_replicas} × ${hours.toFixed(3)} h${rate} = ${cost(alwaysOnH)}`, "cost-always-on"],
        ["saving", `${cost(savedH)}${pct}`, "cost-saving"],
        ...energy,
      ]),
      el("p", { class: "small muted" },
        `Used: every replica's lifetime from start to stop (loading included) since this pool started ${ago(p.since_ms)}. ` +
        `Always on: the observed peak of ${p.peak_replicas} replicas kept running for the same period. ` +
        `Saving: what always on would have cost beyond what was used` +
        (priced ? `.` : ` (set cost_per_hour and currency in the pools file to see it in money).`))));
  }
  return card;
}

function size(bytes) {
  const gib = bytes / 2 ** 30;
  return gib >= 1 ? `${gib.toFixed(gib % 1 ? 1 : 0)} GiB` : `${Math.round(bytes / 2 ** 20)} MiB`;
}

// One GPU: its memory, and which replica holds how much of it, in which state.
function gpuCard(g) {
  const card = el("article", { class: "card pool", "data-gpu": String(g.index), "aria-label": `GPU ${g.index}` },
    el("h3", {}, `GPU ${g.index}`, el("span", { class: "badge" }, g.source === "declared" ? "declared" : g.name)));
  const rows = [["memory", `${size(g.memory_bytes)}, ${size(g.free_bytes)} free`, "gpu-free"]];
  for (const h of g.held) rows.push([h.replica, `${size(h.memory_bytes)} (${h.state})`, "gpu-held"]);
  if (!g.held.length) rows.push(["held", "nothing: every pool on it is at zero or asleep"]);
  if (typeof g.power_w === "number") rows.push([g.held.length ? "drawing" : "idle power", `${g.power_w.toFixed(0)} W (read from the driver)`, "gpu-power"]);
  card.append(facts(rows));
  return card;
}

// The tenants: what each has waiting and running, and how its runs ended.
function tenantRows(tenants) {
  if (!tenants.length) return [];
  const head = el("tr", {}, ...["tenant", "queued", "running", "succeeded", "failed", "expired", "tokens this minute"].map((h) => el("th", {}, h)));
  const rows = tenants.map((t) => el("tr", { "data-tenant": t.tenant },
    el("td", {}, t.tenant), el("td", {}, String(t.queued)), el("td", {}, String(t.running)),
    el("td", {}, String(t.outcomes.succeeded || 0)), el("td", {}, String((t.outcomes.failed || 0) + (t.outcomes.dead || 0))),
    el("td", {}, String(t.outcomes.expired || 0)), el("td", {}, String(t.tokens_this_minute))));
  return [el("table", { class: "tenants", "aria-label": "tenants" }, el("thead", {}, head), el("tbody", {}, ...rows))];
}

function renderOverview(o) {
  overview = o;
  const box = $("pools");
  box.replaceChildren(...o.pools.map((p) => poolCard(p, o.timings_window_s)));
  $("gpus").replaceChildren(...(o.gpus || []).map(gpuCard));
  $("tenants").replaceChildren(...tenantRows(o.tenants || []));
  $("connection").textContent = `live — updated ${new Date(o.now_ms).toLocaleTimeString()}`;
  renderDeploy();
}

async function followOverview() {
  for (;;) {
    try {
      await readEvents("/v1/dashboard/events", (name, data) => {
        if (name === "overview") renderOverview(JSON.parse(data));
        return true;
      });
      $("connection").textContent = "disconnected; reconnecting…";
    } catch (e) {
      $("connection").textContent = `not connected (${e.message}); retrying…`;
    }
    await new Promise((r) => setTimeout(r, 2000));
  }
}

// ---------- timeline ----------

async function refreshTimeline() {
  const pool = $("timeline-pool").value;
  const window = $("timeline-window").value;
  if (!pool) return;
  try {
    const h = await (await api(`/v1/dashboard/history?window=${encodeURIComponent(window)}`)).json();
    drawTimeline(h, pool);
  } catch (e) {
    $("chart").replaceChildren(el("p", { class: "error" }, e.message));
  }
}

/** `n thing` or `n things`. */
function plural(n, thing) {
  return `${n} ${thing}${n === 1 ? "" : "s"}`;
}

/** Tick values for 0..max in round steps (1, 2 or 5 times a power of ten, whole numbers), about `n` of them. */
function ticks(max, n) {
  const raw = Math.max(max, 1) / n;
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw && s >= 1) || Math.max(1, mag);
  // From 0 up to the first tick at or above max (at least 1), so every value fits.
  const top = Math.max(max, 1);
  const out = [];
  for (let v = 0; ; v += step) {
    out.push(v);
    if (v >= top - 1e-9) break;
  }
  return out;
}

function drawTimeline(h, pool) {
  const points = h.series[pool] || [];
  const events = (h.events && h.events[pool]) || [];
  const W = 800, H = 240, L = 44, R = 52, T = 16, B = 36;
  const x = (t) => L + ((t - h.from_ms) / (h.now_ms - h.from_ms)) * (W - L - R);
  const peakR = Math.max(0, ...points.map((p) => p.replicas));
  const peakQ = Math.max(0, ...points.map((p) => p.pending));
  const rTicks = ticks(peakR, 4), qTicks = ticks(peakQ, 4);
  const maxR = rTicks[rTicks.length - 1] || 1;
  const maxQ = qTicks[qTicks.length - 1] || 1;
  const yR = (v) => H - B - (v / maxR) * (H - T - B);
  const yQ = (v) => H - B - (v / maxQ) * (H - T - B);
  const label = `Over the ${$("timeline-window").selectedOptions[0].textContent}, pool ${pool} had at most ${plural(peakR, "replica")} and ${plural(peakQ, "waiting job")}, with ${plural(events.length, "scale event")}.`;
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": label });
  root.append(svg("title", {}));
  root.firstChild.textContent = label;
  const text = (attrs, content) => {
    const t = svg("text", attrs);
    t.textContent = content;
    return t;
  };
  root.append(svg("line", { class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B }));
  root.append(svg("line", { class: "axis", x1: L, x2: L, y1: T, y2: H - B }));
  root.append(svg("line", { class: "axis", x1: W - R, x2: W - R, y1: T, y2: H - B }));
  // Time ticks (local time) and the two value scales, each with its unit.
  for (let i = 0; i <= 4; i++) {
    const t = h.from_ms + ((h.now_ms - h.from_ms) * i) / 4;
    root.append(text({ class: "tick", x: x(t), y: H - B + 14, "text-anchor": "middle" },
      new Date(t).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })));
  }
  root.append(text({ class: "tick", x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle" }, "time (local)"));
  for (const v of rTicks) {
    root.append(svg("line", { class: "grid", x1: L - 4, x2: L, y1: yR(v), y2: yR(v) }));
    root.append(text({ class: "tick tick-replicas", x: L - 6, y: yR(v) + 4, "text-anchor": "end" }, String(v)));
  }
  for (const v of qTicks) {
    root.append(svg("line", { class: "grid", x1: W - R, x2: W - R + 4, y1: yQ(v), y2: yQ(v) }));
    root.append(text({ class: "tick tick-queue", x: W - R + 6, y: yQ(v) + 4 }, String(v)));
  }
  if (points.length) {
    let area = `M ${x(points[0].t_ms)} ${yQ(0)}`;
    for (const p of points) area += ` L ${x(p.t_ms)} ${yQ(p.pending)}`;
    area += ` L ${x(points[points.length - 1].t_ms)} ${yQ(0)} Z`;
    root.append(svg("path", { class: "queue", d: area }));
    let line = `M ${x(points[0].t_ms)} ${yR(points[0].replicas)}`;
    for (let i = 1; i < points.length; i++) {
      line += ` L ${x(points[i].t_ms)} ${yR(points[i - 1].replicas)} L ${x(points[i].t_ms)} ${yR(points[i].replicas)}`;
    }
    root.append(svg("path", { class: "replicas", d: line }));
  }
  for (const e of events) {
    const ex = x(e.t_ms);
    const mark = svg("path", { class: "event", d: `M ${ex - 4} ${T - 8} L ${ex + 4} ${T - 8} L ${ex} ${T} Z` });
    const title = svg("title", {});
    title.textContent = `${new Date(e.t_ms).toLocaleTimeString()}: ${e.from} → ${e.to} replicas — ${e.reason}`;
    mark.append(title);
    root.append(mark, svg("line", { class: "axis", x1: ex, x2: ex, y1: T, y2: H - B, "stroke-dasharray": "2 3" }));
  }
  $("chart").replaceChildren(root);
}

// ---------- jobs ----------

function poolOf(job) {
  return job.model || (overview && overview.pools[0] ? overview.pools[0].name : "–");
}

async function refreshJobs() {
  const status = $("status-filter").value;
  try {
    const list = await (await api(`/v1/jobs?limit=25${status ? "&status=" + encodeURIComponent(status) : ""}`)).json();
    $("jobs-body").replaceChildren(...list.jobs.map((j) => {
      const open = el("button", { type: "button", class: "link", "aria-label": `show job ${j.id}` }, j.id.slice(0, 8));
      open.addEventListener("click", () => showJob(j.id));
      return el("tr", { "data-job": j.id },
        el("td", {}, open),
        el("td", { class: "status-" + j.status, "data-field": "status" }, j.status),
        el("td", {}, poolOf(j)),
        el("td", { class: "num", "data-field": "wait" }, between(j.enqueued_at_ms, j.started_at_ms)),
        el("td", { class: "num", "data-field": "run" }, between(j.started_at_ms, j.finished_at_ms)),
        el("td", { class: "num" }, j.usage ? j.usage.completion_tokens : "–"),
        el("td", { class: "num" }, j.attempts),
        el("td", {}, j.worker_id || "–"));
    }));
  } catch (e) {
    $("jobs-body").replaceChildren(el("tr", {}, el("td", { colSpan: 8, class: "error" }, e.message)));
  }
}

async function showJob(id) {
  const box = $("job-detail");
  try {
    const j = await (await api(`/v1/jobs/${encodeURIComponent(id)}`)).json();
    $("detail-title").textContent = `Job ${j.id}`;
    $("detail-fields").className = "facts";
    $("detail-fields").replaceChildren(...[
      ["status", j.status], ["pool", poolOf(j)], ["attempts", j.attempts], ["worker", j.worker_id || "–"],
      ["enqueued", j.enqueued_at_ms ? new Date(j.enqueued_at_ms).toLocaleString() : "–"],
      ["waited", between(j.enqueued_at_ms, j.started_at_ms)], ["ran", between(j.started_at_ms, j.finished_at_ms)],
      ["first token", j.ttft_ms !== null && j.ttft_ms !== undefined ? secs(j.ttft_ms / 1000, 3) : "–"],
      ["tokens", j.usage ? `${j.usage.prompt_tokens} prompt, ${j.usage.completion_tokens} completion` : "–"],
    ].flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
    $("detail-prompt").textContent = (j.messages || []).map((m) => (j.messages.length > 1 ? m.role + ": " : "") + m.content).join("\n");
    $("detail-answer").textContent = j.result ?? "";
    $("detail-error").textContent = j.error_message ? `${j.error_kind || "error"}: ${j.error_message}` : "";
    box.hidden = false;
    box.focus();
  } catch (e) {
    $("detail-error").textContent = e.message;
    box.hidden = false;
  }
}

// ---------- deploy helper ----------

function policyParams(policy) {
  const [name, rest] = policy.split(/:(.*)/s);
  const params = {};
  for (const part of (rest || "").split(",")) {
    const [k, v] = part.split("=");
    if (k && v !== undefined) params[k.trim()] = v.trim();
  }
  return { name, params };
}

function seconds(text, fallback) {
  if (!text) return fallback;
  const m = /^([\d.]+)\s*(ms|s|m|h)?$/.exec(text);
  if (!m) return fallback;
  const mult = { ms: 0.001, s: 1, m: 60, h: 3600 }[m[2] || "s"];
  return Math.max(1, Math.round(Number(m[1]) * mult));
}

function yamlString(s) {
  return JSON.stringify(String(s));
}

function renderDeploy() {
  if (!overview) return;
  const name = $("deploy-pool").value || (overview.pools[0] && overview.pools[0].name);
  const p = overview.pools.find((x) => x.name === name);
  if (!p) return;
  const min = p.min_replicas ?? 0;
  const max = p.max_replicas ?? 5;
  const concurrency = p.concurrency ?? 4;
  const policy = p.policy || "greenscale";
  const { name: policyName, params } = policyParams(policy);
  const object = `greenscale-worker-${String(name).toLowerCase().replace(/[^a-z0-9-]+/g, "-").replace(/^-+|-+$/g, "").slice(0, 40) || "pool"}`;
  let trigger;
  let polling = 5;
  let cooldown = 30;
  if (policyName.startsWith("keda")) {
    const seed = policyName === "keda-seed";
    polling = seconds(params.poll, seed ? 5 : 30);
    cooldown = seconds(params.cooldown, seed ? 30 : 300);
    trigger = [
      "    - type: redis",
      "      metadata:",
      "        address: redis.greenscale.svc.cluster.local:6379",
      `        listName: ${yamlString(name)}`,
      `        listLength: ${yamlString(params.list_length || (seed ? 1 : 5))}`,
      `        activationListLength: ${yamlString(params.activation || 0)}`,
    ];
  } else {
    trigger = [
      "    - type: external-push",
      "      metadata:",
      "        scalerAddress: greenscale-scaler.greenscale.svc.cluster.local:9090",
      `        list: ${yamlString(name)}`,
      `        policy: ${yamlString(policy)}`,
      `        concurrency: ${yamlString(concurrency)}`,
      `        maxReplicas: ${yamlString(max)}`,
    ];
  }
  $("scaled-object").textContent = [
    "apiVersion: keda.sh/v1alpha1",
    "kind: ScaledObject",
    "metadata:",
    `  name: ${object}`,
    "  namespace: greenscale",
    "spec:",
    "  scaleTargetRef:",
    "    name: greenscale-worker",
    `  minReplicaCount: ${min}`,
    `  maxReplicaCount: ${max}`,
    `  pollingInterval: ${polling}`,
    `  cooldownPeriod: ${cooldown}`,
    "  triggers:",
    ...trigger,
    "",
  ].join("\n");
  $("kustomize-patch").textContent = [
    "apiVersion: apps/v1",
    "kind: Deployment",
    "metadata:",
    "  name: greenscale-worker",
    "  namespace: greenscale",
    "spec:",
    "  template:",
    "    spec:",
    "      containers:",
    "        - name: worker",
    "          env:",
    "            - name: REDIS_LIST_NAME",
    `              value: ${yamlString(name)}`,
    "            - name: GREENSCALE_CONCURRENCY",
    `              value: ${yamlString(concurrency)}`,
    "            - name: GREENSCALE_MODEL",
    `              value: ${yamlString(name)}`,
    "",
  ].join("\n");
}

async function copyBlock(event) {
  const id = event.target.getAttribute("data-copy");
  if (!id) return;
  try {
    await navigator.clipboard.writeText($(id).textContent);
    $("copy-status").textContent = "copied";
  } catch (_) {
    const range = document.createRange();
    range.selectNodeContents($(id));
    const sel = window.getSelection();
    sel.removeAllRanges();
    sel.addRange(range);
    $("copy-status").textContent = "selected: press Ctrl+C (or ⌘C) to copy";
  }
}

// ---------- start ----------

async function start() {
  initTheme();
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    apiKey = $("api-key").value;
    sessionStorage.setItem("greenscale-key", apiKey);
    $("key-form").hidden = true;
    loadModels().then(refreshTimeline).catch(() => {});
    refreshJobs();
  });
  $("prompt-form").addEventListener("submit", submitPrompt);
  $("status-filter").addEventListener("change", refreshJobs);
  $("timeline-pool").addEventListener("change", refreshTimeline);
  $("timeline-window").addEventListener("change", refreshTimeline);
  $("deploy-pool").addEventListener("change", renderDeploy);
  $("detail-close").addEventListener("click", () => { $("job-detail").hidden = true; });
  document.querySelectorAll("button[data-copy]").forEach((b) => b.addEventListener("click", copyBlock));
  try {
    await loadModels();
  } catch (e) {
    $("connection").textContent = e.message;
  }
  followOverview();
  refreshTimeline();
  refreshJobs();
  setInterval(() => { if (!document.hidden) refreshJobs(); }, 2000);
  setInterval(() => { if (!document.hidden) refreshTimeline(); }, 10000);
}

document.addEventListener("DOMContentLoaded", start);
