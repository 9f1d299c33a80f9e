// Tollgate live dashboard: signs in (client credentials or a pasted token),
// polls /v1/admin/stats every two seconds and draws what it gets. Values from
// the server are only ever set as text, never parsed as HTML.
"use strict";

const POLL_MS = 2000;
const TREND_POINTS = 60;
const TOKEN_KEY = "tollgate.dashboard.token";
const trends = new Map();
let timer = null;

const $ = (id) => document.getElementById(id);

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function fmtMs(v) {
  if (v === null || v === undefined) return "–";
  if (v < 10) return v.toFixed(1) + " ms";
  if (v < 1000) return Math.round(v) + " ms";
  return (v / 1000).toFixed(2) + " s";
}

function fmtPct(v) {
  return (v * 100).toFixed(v > 0 && v < 0.01 ? 2 : 1) + " %";
}

function meter(share) {
  const m = el("span", null, "meter");
  const fill = el("span");
  fill.style.width = Math.max(0, Math.min(100, share * 100)).toFixed(1) + "%";
  m.appendChild(fill);
  return m;
}

function sparkline(points) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("viewBox", "0 0 90 22");
  const max = Math.max(1e-9, ...points);
  const step = points.length > 1 ? 90 / (points.length - 1) : 0;
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", points.map((p, i) => `${(i * step).toFixed(1)},${(21 - (p / max) * 20).toFixed(1)}`).join(" "));
  svg.appendChild(line);
  return svg;
}

function setStatus(text, cls) {
  const s = $("status");
  s.textContent = text;
  s.className = "status " + (cls || "");
}

function showLogin(message) {
  if (timer) clearTimeout(timer);
  timer = null;
  $("board").hidden = true;
  $("login").hidden = false;
  $("signout").hidden = true;
  $("login-error").textContent = message || "";
  setStatus("signed out");
}

function renderTenants(snap) {
  const body = $("tenants").tBodies[0];
  body.replaceChildren();
  const seen = new Set();
  for (const t of snap.tenants) {
    seen.add(t.tenant);
    const trend = trends.get(t.tenant) || [];
    trend.push(t.requests_per_sec);
    while (trend.length > TREND_POINTS) trend.shift();
    trends.set(t.tenant, trend);
    const row = el("tr");
    row.dataset.tenant = t.tenant;
    row.appendChild(el("td", t.tenant));
    row.appendChild(el("td", t.requests_per_sec.toFixed(2)));
    const spark = el("td");
    spark.appendChild(sparkline(trend));
    row.appendChild(spark);
    row.appendChild(el("td", t.requests));
    row.appendChild(el("td", fmtMs(t.latency_ms && t.latency_ms.p50)));
    row.appendChild(el("td", fmtMs(t.latency_ms && t.latency_ms.p99)));
    row.appendChild(el("td", fmtMs(t.ttft_ms && t.ttft_ms.p50)));
    row.appendChild(el("td", fmtMs(t.ttft_ms && t.ttft_ms.p99)));
    row.appendChild(el("td", fmtPct(t.error_rate), t.error_rate > 0.01 ? "rate-bad" : ""));
    row.appendChild(el("td", fmtPct(t.ratelimited_rate), t.ratelimited_rate > 0.05 ? "rate-bad" : ""));
    body.appendChild(row);
  }
  for (const name of [...trends.keys()]) if (!seen.has(name)) trends.delete(name);
  $("no-traffic").hidden = snap.tenants.length > 0;
  $("window").textContent = `last ${snap.window_secs} s`;
}

function renderQueues(snap) {
  const box = $("queues");
  box.replaceChildren();
  const max = Math.max(1, ...snap.queues.map((q) => q.depth));
  for (const q of snap.queues) {
    const card = el("div", null, "queue");
    card.dataset.priority = q.priority;
    card.appendChild(el("div", q.priority, "muted"));
    const depth = el("span", q.depth, "depth");
    card.appendChild(depth);
    card.appendChild(meter(q.depth / max));
    box.appendChild(card);
  }
}

function renderWorkers(snap) {
  const body = $("workers").tBodies[0];
  body.replaceChildren();
  for (const w of snap.workers) {
    const shards = w.shards.length ? w.shards : [null];
    for (const s of shards) {
      const row = el("tr");
      row.appendChild(el("td", w.worker));
      row.appendChild(el("td", s ? s.shard : "–"));
      const state = el("td");
      const ok = w.up && s && s.healthy && !w.draining;
      state.appendChild(el("span", w.draining ? "draining" : ok ? "up" : "down", "badge " + (w.draining ? "warn" : ok ? "ok" : "bad")));
      row.appendChild(state);
      const inflight = el("td", s ? `${s.inflight} / ${s.max_inflight}` : "–");
      if (s) inflight.appendChild(meter(s.max_inflight ? s.inflight / s.max_inflight : 0));
      row.appendChild(inflight);
      row.appendChild(el("td", s ? s.running : "–"));
      row.appendChild(el("td", s ? s.waiting : "–"));
      const kv = el("td", s ? fmtPct(s.kv_cache_usage) : "–");
      if (s) kv.appendChild(meter(s.kv_cache_usage));
      row.appendChild(kv);
      body.appendChild(row);
    }
  }
}

function render(snap) {
  renderTenants(snap);
  renderQueues(snap);
  renderWorkers(snap);
  const t = snap.telemetry;
  $("telemetry").textContent =
    `Updated ${snap.generated_at} · audit records from ${t.audit_source}, ${t.audit_dropped} dropped · ` +
    `spans exported ${t.spans_exported}, dropped ${t.spans_dropped}`;
  document.body.dataset.loaded = "1";
}

async function poll() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (!token) return showLogin();
  try {
    const r = await fetch("/v1/admin/stats", { headers: { Authorization: "Bearer " + token }, cache: "no-store" });
    if (r.status === 401 || r.status === 403) {
      sessionStorage.removeItem(TOKEN_KEY);
      return showLogin(r.status === 403 ? "This token lacks the admin scope." : "The token expired or was refused; sign in again.");
    }
    if (!r.ok) throw new Error("HTTP " + r.status);
    render(await r.json());
    setStatus("live", "live");
  } catch (e) {
    setStatus("stale: " + e.message, "stale");
  }
  timer = setTimeout(poll, POLL_MS);
}

function start() {
  $("login").hidden = true;
  $("board").hidden = false;
  $("signout").hidden = false;
  if (!timer) poll();
}

async function signIn(ev) {
  ev.preventDefault();
  $("login-error").textContent = "";
  const pasted = $("token").value.trim();
  if (pasted) {
    sessionStorage.setItem(TOKEN_KEY, pasted);
    $("token").value = "";
    return start();
  }
  const id = $("client-id").value.trim();
  const secret = $("client-secret").value;
  $("client-secret").value = "";
  // RFC 6749 §2.3.1: each part form-urlencoded before Basic.
  const basic = btoa(unescape(encodeURIComponent(encodeURIComponent(id) + ":" + encodeURIComponent(secret))));
  try {
    const r = await fetch("/oauth/token", {
      method: "POST",
      headers: { Authorization: "Basic " + basic, "Content-Type": "application/x-www-form-urlencoded" },
      body: "grant_type=client_credentials",
      cache: "no-store",
    });
    const body = await r.json();
    if (!r.ok) return showLogin(body.error_description || body.error || "sign-in failed");
    sessionStorage.setItem(TOKEN_KEY, body.access_token);
    start();
  } catch (e) {
    showLogin("sign-in failed: " + e.message);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  // A token in the fragment (never sent to the server) signs in at once; it
  // is taken out of the address bar and history straight away.
  const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (m) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname);
  }
  $("login-form").addEventListener("submit", signIn);
  $("signout").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin();
  });
  if (sessionStorage.getItem(TOKEN_KEY)) start();
  else showLogin();
});
