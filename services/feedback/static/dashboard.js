// Baton's live dashboard: reads the reports API with the viewer's key, redraws on every `changed` from the stream.
// Plain JS, no build step: every chart is an inline SVG made here. Data is only ever set as text, never as HTML.
"use strict";

const KEY_STORAGE = "baton.dashboard.key";
const SVG_NS = "http://www.w3.org/2000/svg";
const DEBOUNCE_MS = 250;
const STAGES = [
  ["captured", "Captured", null],
  ["mql", "MQL", "mql_rate"],
  ["accepted", "Accepted", "accept_rate"],
  ["sql", "SQL", "sql_rate"],
  ["won", "Won", "win_rate"],
];
const BANDS = ["0-19", "20-39", "40-59", "60-79", "80-100"];

const state = { key: null, days: 30, stream: null, timer: null, loading: false, again: false, retry: 1000 };
const $ = (id) => document.getElementById(id);

// --- formatting ------------------------------------------------------------------------------------------------

const count = (value) => (value == null ? "0" : Number(value).toLocaleString("en-US"));
const rate = (value) => (value == null ? "–" : `${(value * 100).toFixed(value >= 0.1 || value === 0 ? 0 : 1)}%`);
const money = (value) =>
  value == null ? "–" : Number(value).toLocaleString("en-US", { maximumFractionDigits: 0 });

function duration(seconds) {
  if (seconds == null) return "–";
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 120) return `${Math.round(seconds)} s`;
  if (seconds < 7200) return `${Math.round(seconds / 60)} min`;
  if (seconds < 172800) return `${(seconds / 3600).toFixed(1)} h`;
  return `${(seconds / 86400).toFixed(1)} d`;
}

function isoDay(date) {
  return date.toISOString().slice(0, 10);
}

function range() {
  // Reports group leads by their capture day in UTC, so the range is in UTC days too.
  const to = new Date();
  const from = new Date(to.getTime() - (state.days - 1) * 86400000);
  return { from: isoDay(from), to: isoDay(to) };
}

// --- drawing helpers -------------------------------------------------------------------------------------------

function el(tag, attrs = {}, text) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  if (text != null) node.textContent = text;
  return node;
}

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  if (text != null) node.textContent = text;
  return node;
}

function canvas(width, height, label) {
  return svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": label });
}

function replace(container, ...children) {
  container.replaceChildren(...children);
}

// --- panels ----------------------------------------------------------------------------------------------------

function drawFunnel(totals) {
  const width = 400, row = 40, top = 8, labelWidth = 70, barMax = 230;
  const chart = canvas(width, top + row * STAGES.length + 22, "Funnel");
  const most = Math.max(1, Number(totals.captured || 0));
  STAGES.forEach(([name, label, rateName], index) => {
    const value = Number(totals[name] || 0);
    const y = top + index * row;
    chart.append(svg("text", { x: 0, y: y + 17 }, label));
    chart.append(svg("rect", { x: labelWidth, y: y + 4, width: barMax, height: 18, fill: "#eef1f6", rx: 2 }));
    const bar = Math.max(value > 0 ? 2 : 0, (barMax * value) / most);
    chart.append(svg("rect", { x: labelWidth, y: y + 4, width: bar, height: 18, fill: "#3b6fd8", rx: 2 }));
    chart.append(
      svg("text", { x: labelWidth + barMax + 8, y: y + 18, id: `funnel-${name}`, "data-value": value }, count(value)),
    );
    if (rateName) {
      const text = `${rate(totals[rateName])} of previous`;
      chart.append(svg("text", { x: labelWidth, y: y + 35, class: "muted", id: `funnel-${rateName}` }, text));
    }
  });
  const overall = `Captured → won: ${rate(totals.overall_rate)}`;
  chart.append(svg("text", { x: 0, y: top + row * STAGES.length + 14, class: "muted" }, overall));
  replace($("funnel"), chart);
}

function speedBars(chart, y, title, totals, prefix, idPrefix) {
  const labelWidth = 40, barMax = 250, values = [50, 90, 99].map((p) => totals[`${prefix}_p${p}`]);
  // Log scale: p99 may be days while p50 is seconds.
  const scale = (s) => (s == null ? 0 : Math.max(2, (barMax * Math.log10(1 + s)) / Math.log10(1 + 604800)));
  const leads = Number(totals[prefix === "touch" ? "touched" : "assigned"] || 0);
  chart.append(svg("text", { x: 0, y: y + 10, class: "muted" }, `${title} (${count(leads)} ${leads === 1 ? "lead" : "leads"})`));
  [50, 90, 99].forEach((p, index) => {
    const top = y + 16 + index * 22, value = values[index];
    chart.append(svg("text", { x: 0, y: top + 13 }, `p${p}`));
    chart.append(svg("rect", { x: labelWidth, y: top, width: scale(value), height: 16, rx: 2, fill: ["#9db7ee", "#3b6fd8", "#24437f"][index] }));
    const attrs = { x: labelWidth + scale(value) + 6, y: top + 13, id: `${idPrefix}-p${p}`, "data-seconds": value == null ? "" : value };
    chart.append(svg("text", attrs, duration(value)));
  });
}

function drawSpeed(totals) {
  const chart = canvas(400, 250, "Speed to lead");
  speedBars(chart, 0, "First touch", totals, "touch", "speed");
  speedBars(chart, 88, "Assignment", totals, "assign", "assign");
  const compliance = totals.sla_compliance;
  const y = 190, color = compliance == null ? "#677086" : compliance >= 0.9 ? "#1e9e5a" : compliance >= 0.7 ? "#d48a0a" : "#cc3b3b";
  chart.append(svg("text", { x: 0, y: y + 10, class: "muted" }, "SLA compliance"));
  chart.append(svg("text", { x: 0, y: y + 36, class: "big", fill: color, id: "speed-sla", "data-value": compliance ?? "" }, rate(compliance)));
  chart.append(svg("rect", { x: 90, y: y + 22, width: 250, height: 12, rx: 2, fill: "#eef1f6" }));
  chart.append(svg("rect", { x: 90, y: y + 22, width: 250 * (compliance || 0), height: 12, rx: 2, fill: color }));
  const detail = `${count(totals.sla_met)} met · ${count(totals.sla_missed_leads)} leads missed (${count(totals.sla_misses)} misses)`;
  chart.append(svg("text", { x: 90, y: y + 52, class: "muted" }, detail));
  replace($("speed"), chart);
}

function goalBar(goal) {
  const width = 400, barWidth = 400, target = Number(goal.target) || 0;
  const share = (value) => Math.max(0, Math.min(1, Number(value || 0)));
  const chart = canvas(width, 22, `${goal.name}: ${rate(goal.progress)}`);
  chart.append(svg("rect", { x: 0, y: 4, width: barWidth, height: 12, rx: 2, fill: "#eef1f6" }));
  if (goal.forecast != null && target > 0) {
    chart.append(svg("rect", { x: 0, y: 4, width: barWidth * share(Number(goal.forecast) / target), height: 12, rx: 2, fill: "#c9d8f6", class: "forecast" }));
  }
  const color = goal.on_track === false ? "#cc3b3b" : "#1e9e5a";
  chart.append(svg("rect", { x: 0, y: 4, width: barWidth * share(goal.progress), height: 12, rx: 2, fill: color }));
  if (goal.expected_by_now != null && target > 0) {
    const x = barWidth * share(Number(goal.expected_by_now) / target);
    chart.append(svg("line", { x1: x, x2: x, y1: 1, y2: 19, stroke: "#1d2330", "stroke-width": 2 }));
  }
  return chart;
}

function drawGoals(goals) {
  const box = $("goals");
  if (!goals.length) return replace(box, el("p", { class: "empty" }, "No goals yet."));
  const rows = goals.map((goal) => {
    const row = el("div", { class: "goal", "data-goal-id": goal.goal_id, "data-progress": goal.progress ?? "" });
    const title = el("div", { class: "title" });
    title.append(el("span", { class: "name", title: goal.name }, goal.name));
    const badge = el("span", { class: goal.on_track === false ? "badge behind" : "badge" }, goal.on_track === false ? "behind" : "on track");
    title.append(badge);
    const amount = goal.metric.startsWith("speed") ? duration : money;
    const meta = `${goal.metric}: ${amount(goal.actual)} of ${amount(goal.target)} (${rate(goal.progress)}) · forecast ${amount(goal.forecast)} · ${goal.days_left} days left`;
    row.append(title, goalBar(goal), el("div", { class: "meta" }, meta));
    return row;
  });
  replace(box, ...rows);
}

function drawCampaigns(funnel, revenue) {
  const byCampaign = new Map();
  for (const row of funnel.rows || []) byCampaign.set(row.group, { funnel: row, revenue: {} });
  for (const row of revenue.rows || []) {
    const entry = byCampaign.get(row.group) || { funnel: {}, revenue: {} };
    entry.revenue = row;
    byCampaign.set(row.group, entry);
  }
  const entries = [...byCampaign.entries()].sort((a, b) => (b[1].funnel.captured || 0) - (a[1].funnel.captured || 0));
  const body = $("campaigns").tBodies[0];
  if (!entries.length) {
    return replace(body, wrapRow(el("td", { colspan: 10, class: "empty" }, "No leads in this range.")));
  }
  body.replaceChildren(
    ...entries.map(([group, { funnel: f, revenue: r }]) => {
      const row = el("tr", { "data-campaign": group });
      const cells = [
        [group, null], [count(f.captured), "captured"], [count(f.mql), "mql"], [count(f.accepted), "accepted"],
        [count(f.sql), "sql"], [count(f.won), "won"], [rate(f.win_rate), "win_rate"],
        [money(r.first_touch_revenue), "first_touch_revenue"], [money(r.last_touch_revenue), "last_touch_revenue"],
        [count(r.open_pipeline), "open_pipeline"],
      ];
      for (const [text, field] of cells) row.append(el("td", field ? { "data-field": field } : { title: group }, text));
      return row;
    }),
  );
}

function wrapRow(cell) {
  const row = el("tr");
  row.append(cell);
  return row;
}

function drawCalibration(report) {
  const byBand = new Map((report.rows || []).map((row) => [row.group, row]));
  const width = 400, height = 240, left = 34, bottom = 206, plot = 160, slot = (width - left) / BANDS.length;
  const chart = canvas(width, height, "Score calibration");
  for (const tick of [0, 0.5, 1]) {
    const y = bottom - plot * tick;
    chart.append(svg("line", { x1: left, x2: width, y1: y, y2: y, stroke: "#dde1e8" }));
    chart.append(svg("text", { x: 0, y: y + 4, class: "muted" }, `${tick * 100}%`));
  }
  BANDS.forEach((band, index) => {
    const row = byBand.get(band) || {};
    const x = left + index * slot + 8, bar = (slot - 20) / 2;
    const group = svg("g", { "data-band": band, "data-gap": row.gap ?? "" });
    const predicted = row.predicted_win_rate, actual = row.actual_win_rate;
    group.append(svg("rect", { x, y: bottom - plot * (predicted || 0), width: bar, height: plot * (predicted || 0), fill: "#9db7ee" }));
    group.append(svg("rect", { x: x + bar + 2, y: bottom - plot * (actual || 0), width: bar, height: plot * (actual || 0), fill: "#3b6fd8" }));
    group.append(svg("text", { x, y: bottom + 14 }, band));
    group.append(svg("text", { x, y: bottom + 28, class: "muted" }, `${count(row.decided)} decided`));
    group.append(svg("title", {}, `${band}: predicted ${rate(predicted)}, actual ${rate(actual)}, ${count(row.won)} won of ${count(row.decided)}`));
    chart.append(group);
  });
  chart.append(svg("rect", { x: left, y: 2, width: 10, height: 10, fill: "#9db7ee" }));
  chart.append(svg("text", { x: left + 14, y: 11, class: "muted" }, "predicted"));
  chart.append(svg("rect", { x: left + 90, y: 2, width: 10, height: 10, fill: "#3b6fd8" }));
  chart.append(svg("text", { x: left + 104, y: 11, class: "muted" }, "actual"));
  replace($("calibration"), chart);
}

// --- data ------------------------------------------------------------------------------------------------------

class Unauthorized extends Error {}

async function getJson(path) {
  const response = await fetch(path, { headers: { Authorization: `Bearer ${state.key}`, Accept: "application/json" } });
  if (response.status === 401 || response.status === 403) throw new Unauthorized(`${response.status} on ${path}`);
  if (!response.ok) throw new Error(`${path} answered ${response.status}`);
  return response.json();
}

function report(name, groupBy) {
  const { from, to } = range();
  const query = new URLSearchParams({ from, to, group_by: groupBy });
  return getJson(`/v1/reports/${name}?${query}`);
}

async function load() {
  if (state.loading) {
    state.again = true;
    return;
  }
  state.loading = true;
  try {
    const [funnel, speed, revenue, calibration, goals] = await Promise.all([
      report("funnel", "campaign"),
      report("speed", "all"),
      report("revenue", "campaign"),
      report("calibration", "score_band"),
      getJson("/v1/goals"),
    ]);
    drawFunnel(funnel.totals || {});
    drawSpeed(speed.totals || {});
    drawCampaigns(funnel, revenue);
    drawCalibration(calibration);
    drawGoals(Array.isArray(goals) ? goals : goals.goals || []);
    const { from, to } = range();
    $("range-label").textContent = `${from} → ${to}`;
    const now = new Date();
    $("last-updated").textContent = `updated ${now.toLocaleTimeString()}`;
    $("last-updated").dataset.at = now.toISOString();
    showError(null);
  } catch (error) {
    if (error instanceof Unauthorized) return askForKey("That key was refused.");
    showError(`Could not load reports: ${error.message}`);
  } finally {
    state.loading = false;
    if (state.again) {
      state.again = false;
      schedule();
    }
  }
}

function schedule() {
  clearTimeout(state.timer);
  state.timer = setTimeout(load, DEBOUNCE_MS);
}

function showError(message) {
  $("error").hidden = !message;
  $("error").textContent = message || "";
}

// --- live stream -----------------------------------------------------------------------------------------------

function setLive(status) {
  const box = $("live-status");
  box.dataset.state = status;
  box.querySelector(".text").textContent = status;
}

function parseFrame(frame) {
  const event = { type: "message", data: "" };
  for (const line of frame.split("\n")) {
    if (line.startsWith("event:")) event.type = line.slice(6).trim();
    else if (line.startsWith("data:")) event.data += line.slice(5).trim();
  }
  return event;
}

async function follow(controller) {
  setLive("connecting");
  const response = await fetch("/v1/dashboard/stream", {
    headers: { Authorization: `Bearer ${state.key}`, Accept: "text/event-stream" },
    signal: controller.signal,
    cache: "no-store",
  });
  if (response.status === 401 || response.status === 403) throw new Unauthorized("stream refused the key");
  if (!response.ok || !response.body) throw new Error(`stream answered ${response.status}`);
  setLive("live");
  state.retry = 1000;
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = parseFrame(buffer.slice(0, end));
      buffer = buffer.slice(end + 2);
      if (event.type === "changed") schedule();
    }
  }
}

function connect() {
  if (state.stream) state.stream.abort();
  const controller = new AbortController();
  state.stream = controller;
  follow(controller)
    .catch((error) => {
      if (error instanceof Unauthorized) askForKey("That key was refused.");
      return error;
    })
    .then(() => {
      if (controller.signal.aborted || state.stream !== controller) return;
      // The stream ended (server restart, network): say so, then reconnect with a growing pause.
      setLive("offline");
      setTimeout(() => state.stream === controller && connect(), state.retry);
      state.retry = Math.min(state.retry * 2, 15000);
    });
}

// --- key and range ---------------------------------------------------------------------------------------------

function askForKey(message) {
  if (state.stream) state.stream.abort();
  state.stream = null;
  state.key = null;
  sessionStorage.removeItem(KEY_STORAGE);
  setLive("offline");
  $("forget-key").hidden = true;
  $("key-error").textContent = message || "";
  $("key-panel").hidden = false;
  $("api-key").focus();
}

function start(key) {
  state.key = key;
  sessionStorage.setItem(KEY_STORAGE, key);
  $("key-panel").hidden = true;
  $("forget-key").hidden = false;
  connect();
  load();
}

function keyFromFragment() {
  const params = new URLSearchParams(location.hash.slice(1));
  const key = params.get("key");
  if (key) history.replaceState(null, "", location.pathname + location.search);  // keep it out of the address bar
  return key;
}

function pickRange(days) {
  state.days = days;
  for (const button of document.querySelectorAll("#range-picker .range")) {
    button.setAttribute("aria-pressed", String(Number(button.dataset.days) === days));
  }
  if (state.key) load();
}

document.addEventListener("DOMContentLoaded", () => {
  state.days = Number(document.body.dataset.defaultRange) || 30;
  for (const button of document.querySelectorAll("#range-picker .range")) {
    button.addEventListener("click", () => pickRange(Number(button.dataset.days)));
  }
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("api-key").value.trim();
    $("api-key").value = "";
    if (key) start(key);
  });
  $("forget-key").addEventListener("click", () => askForKey(""));
  const key = keyFromFragment() || sessionStorage.getItem(KEY_STORAGE);
  if (key) start(key);
  else askForKey("");
});
