// Herald's live dashboard: follows GET /api/v1/dashboard/realtime/stream (server-sent events read with fetch,
// so that the API key travels in the Authorization header), and the selected campaign's analytics.
"use strict";

const KEY = "herald.apiKey";
const $ = (id) => document.getElementById(id);
const fmt = new Intl.NumberFormat("en-US");
const num = (v) => (v === null || v === undefined ? "–" : fmt.format(v));
const pct = (v) => (v === null || v === undefined ? "–" : `${v.toFixed(1)} %`);
const money = (v) => (v === null || v === undefined ? "–" : v.toFixed(2));
let selected = null;
let stream = null;

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function row(values) {
  const tr = document.createElement("tr");
  values.forEach((v) => tr.appendChild(cell(v)));
  return tr;
}

function showLogin(message) {
  if (stream) stream.abort();
  $("app").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("key").focus();
}

async function api(path) {
  const key = sessionStorage.getItem(KEY);
  const response = await fetch(path, { headers: { Authorization: `Bearer ${key}` } });
  if (response.status === 401 || response.status === 403) {
    sessionStorage.removeItem(KEY);
    showLogin("That key was not accepted.");
    throw new Error("unauthorized");
  }
  return response;
}

function drawChart(points) {
  const svg = $("chart");
  const w = 600, h = 180, pad = 6;
  const max = Math.max(1, ...points.map((p) => Math.max(p.sent, p.delivered, p.opened)));
  const x = (i) => pad + (i * (w - 2 * pad)) / Math.max(1, points.length - 1);
  const y = (v) => h - pad - (v * (h - 2 * pad)) / max;
  const line = (field, color) =>
    `<polyline fill="none" stroke="${color}" stroke-width="2" data-series="${field}" points="${points
      .map((p, i) => `${x(i).toFixed(1)},${y(p[field]).toFixed(1)}`).join(" ")}"/>`;
  svg.innerHTML = `<line x1="0" y1="${h - pad}" x2="${w}" y2="${h - pad}" stroke="#e3e6ee"/>` +
    line("opened", "#e08a00") + line("delivered", "#1f9d55") + line("sent", "#2f6df6") +
    `<text x="${w - 4}" y="14" text-anchor="end" font-size="11" fill="#6b7385">${fmt.format(max)}/min</text>`;
}

function render(data) {
  for (const id of ["active_campaigns", "messages_sent_today", "messages_sending_now"]) $(id).textContent = num(data[id]);
  $("current_qps").textContent = data.current_qps.toFixed(1);
  drawChart(data.sent_per_minute);
  const channels = $("channels");
  channels.replaceChildren(...Object.entries(data.channels).map(([ch, m]) =>
    row([ch, num(m.sent), num(m.delivered), num(m.opened), num(m.clicked)])));
  const campaigns = $("campaigns");
  if (!data.top_campaigns.length) return;
  campaigns.replaceChildren(...data.top_campaigns.map((c) => {
    const m = c.metrics, r = c.rates;
    const tr = row([c.name || `#${c.campaign_id}`, c.status || "–", num(m.sent), num(m.delivered), num(m.opened),
      num(m.clicked), num(m.converted), pct(r.open_rate), pct(r.click_rate), pct(r.conversion_rate),
      money(c.revenue.total)]);
    tr.className = "campaign" + (c.campaign_id === selected ? " selected" : "");
    tr.dataset.campaignId = c.campaign_id;
    tr.addEventListener("click", () => { selected = c.campaign_id; loadDetail(); });
    return tr;
  }));
}

async function loadDetail() {
  if (selected === null) return;
  const response = await api(`/api/v1/campaigns/${selected}/analytics`);
  if (!response.ok) return;
  const a = await response.json();
  $("detail").hidden = false;
  $("detail-title").textContent = `Campaign #${a.campaign_id}: funnel`;
  const steps = ["sent", "delivered", "opened", "clicked", "converted"];
  const top = Math.max(1, a.metrics.sent);
  $("funnel").replaceChildren(...steps.map((s) => {
    const div = document.createElement("div");
    div.className = "step";
    div.dataset.step = s;
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.style.width = `${(100 * a.metrics[s]) / top}%`;
    const label = document.createElement("span");
    label.textContent = s;
    const n = document.createElement("span");
    n.className = "num";
    n.textContent = num(a.metrics[s]);
    div.append(label, bar, n);
    return div;
  }));
  $("detail-channels").replaceChildren(...Object.entries(a.channel_breakdown).map(([ch, v]) =>
    row([ch, num(v.metrics.sent), num(v.metrics.delivered), num(v.metrics.opened), num(v.metrics.clicked),
      num(v.metrics.converted)])));
  $("detail-variants").replaceChildren(...Object.entries(a.variant_breakdown).map(([name, v]) =>
    row([name, num(v.metrics.sent), num(v.metrics.opened), pct(v.rates.open_rate), num(v.metrics.converted),
      money(v.revenue.total)])));
  for (const tr of $("campaigns").children) tr.classList.toggle("selected", Number(tr.dataset.campaignId) === selected);
}

async function follow() {
  stream = new AbortController();
  const key = sessionStorage.getItem(KEY);
  try {
    const response = await fetch("/api/v1/dashboard/realtime/stream",
      { headers: { Authorization: `Bearer ${key}` }, signal: stream.signal });
    if (response.status === 401 || response.status === 403) {
      sessionStorage.removeItem(KEY);
      showLogin("That key was not accepted.");
      return;
    }
    $("status").textContent = "live";
    $("status").classList.add("live");
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let ticks = 0;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = block.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
        if (!data) continue;
        render(JSON.parse(data));
        if (selected !== null && ++ticks % 2 === 0) loadDetail().catch(() => {});
      }
    }
  } catch (error) {
    if (error.name === "AbortError") return;
  }
  $("status").textContent = "reconnecting…";
  $("status").classList.remove("live");
  setTimeout(follow, 2000);
}

function start() {
  $("login").hidden = true;
  $("app").hidden = false;
  follow();
}

$("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY, $("key").value.trim());
  try {
    const response = await api("/api/v1/dashboard/realtime");
    if (response.ok) start();
  } catch (_) { /* showLogin said why */ }
});
$("forget").addEventListener("click", () => { sessionStorage.removeItem(KEY); showLogin(""); });
if (sessionStorage.getItem(KEY)) start(); else showLogin("");
