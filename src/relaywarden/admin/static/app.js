// relaywarden web console: a small single-page app on the JSON API (docs/admin.md).
// Plain ES module, no build step, no framework, no external assets: the admin server serves
// this file, index.html and app.css from the package, and charts are inline SVG drawn here.
// Every piece of data goes into the page as text (textContent, attributes), never as HTML.

const API = "/api/v1";
const POLL_MS = 5000;
const SERIES = [
  { key: "received", label: "Received", color: "#2563eb" },
  { key: "delivered", label: "Delivered", color: "#16a34a" },
  { key: "deferred", label: "Deferred", color: "#d97706" },
  { key: "bounced", label: "Bounced", color: "#dc2626" },
  { key: "rejected", label: "Rejected", color: "#7c3aed" },
  { key: "quarantined", label: "Quarantined", color: "#db2777" },
];
const ROLE_RANK = { viewer: 1, operator: 2, admin: 3 };
// Queue IDs: microseconds since the epoch then 40 random bits, in this alphabet
// (relaywarden.queue.store.new_queue_id).
const QUEUE_ID_RE = /^[0-9BCDFGHJKLMNPQRSTVWXZ]{14,26}$/;
const IP_RE = /^(\d{1,3}(\.\d{1,3}){3}|[0-9a-f:]*:[0-9a-f:.]*)$/i;

// ---------------------------------------------------------------------------------------
// DOM helpers

const $ = (sel, root = document) => root.querySelector(sel);

/** Replace an element's children (null/false children are left out). */
function put(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

function setAttrs(el, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.setAttribute("class", v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "value" && "value" in el) el.value = v;
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, v);
  }
  return el;
}

/** h("a", {href: "#/x", class: "y"}, "text", child...) */
function h(tag, attrs, ...children) {
  return append(setAttrs(document.createElement(tag), attrs), children);
}

const SVG_NS = "http://www.w3.org/2000/svg";
function svg(tag, attrs, ...children) {
  return append(setAttrs(document.createElementNS(SVG_NS, tag), attrs), children);
}

// ---------------------------------------------------------------------------------------
// Formatting

const pad = (n) => String(n).padStart(2, "0");

function fmtTime(epoch) {
  if (epoch === null || epoch === undefined || epoch === "") return "—";
  const d = new Date(Number(epoch) * 1000);
  if (Number.isNaN(d.getTime())) return String(epoch);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} `
    + `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

function fmtClock(epoch) {
  const d = new Date(Number(epoch) * 1000);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

function fmtAge(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(Number(seconds))) return "—";
  let s = Math.max(0, Math.round(Number(seconds)));
  if (s < 60) return `${s} s`;
  const d = Math.floor(s / 86400); s -= d * 86400;
  const hh = Math.floor(s / 3600); s -= hh * 3600;
  const m = Math.floor(s / 60);
  if (d) return hh ? `${d} d ${hh} h` : `${d} d`;
  if (hh) return m ? `${hh} h ${m} min` : `${hh} h`;
  return `${m} min`;
}

function fmtAgo(epoch) {
  if (!epoch) return "";
  const delta = Date.now() / 1000 - Number(epoch);
  if (delta < 0) return `in ${fmtAge(-delta)}`;
  return `${fmtAge(delta)} ago`;
}

/** A time: the local time (and date, unless today or ``full``), "3 min ago" under it,
 * the UTC time on hover. */
function timeNode(epoch, full = false) {
  if (!epoch) return h("span", { class: "muted" }, "—");
  const iso = new Date(Number(epoch) * 1000).toISOString();
  const text = fmtTime(epoch);
  const today = text.slice(0, 10) === fmtTime(Date.now() / 1000).slice(0, 10);
  return h("time", { datetime: iso, title: `${text} local, ${iso.replace(/\.\d+Z$/, "Z")}` },
    full || !today ? text : text.slice(11), h("span", { class: "sub" }, fmtAgo(epoch)));
}

function fmtBytes(n) {
  if (n === null || n === undefined) return "—";
  n = Number(n);
  const units = ["B", "KB", "MB", "GB", "TB", "PB"];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${i ? n.toFixed(n < 10 ? 1 : 0) : n} ${units[i]}`;
}

const fmtNum = (n) => Number(n || 0).toLocaleString("en-US");

function toEpochSeconds(m) {
  m = Number(m);
  if (m > 1e11) return m / 1000;       // milliseconds
  if (m < 1e8) return m * 60;          // minutes since the epoch
  return m;
}

function sum(values) {
  return (values || []).reduce((a, v) => a + (Number(v) || 0), 0);
}

function badge(status, testid) {
  const s = String(status ?? "unknown");
  return h("span", { class: `badge badge-${s.replace(/[^a-z-]/gi, "")}`, "data-testid": testid }, s);
}

/** One word for a message from its recipients (as the history does): what still needs
 * attention first, then how it ended. */
function messageStatus(recipients) {
  const found = new Set((recipients || []).map(recipientStatus));
  for (const s of ["badmail", "held", "deferred", "queued", "bounced", "deleted"]) {
    if (found.has(s)) return s;
  }
  return found.size ? "delivered" : "queued";
}

function recipientStatus(r) {
  if (r.status === "queued" && Number(r.attempts) > 0) return "deferred";
  return r.status;
}

const recipientAddress = (r) => (typeof r === "string" ? r : (r.address ?? r.to ?? ""));
const itemId = (item) => item.id ?? item.queue_id;

// ---------------------------------------------------------------------------------------
// API

class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

const session = { user: null, role: null, csrf: null };

function can(role) {
  return (ROLE_RANK[session.role] || 0) >= ROLE_RANK[role];
}

async function api(method, path, { body, query } = {}) {
  let url = API + path;
  if (query) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(query)) {
      if (v !== undefined && v !== null && v !== "") q.set(k, v);
    }
    const text = q.toString();
    if (text) url += `?${text}`;
  }
  const headers = { Accept: "application/json, application/problem+json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && session.csrf) headers["X-CSRF-Token"] = session.csrf;
  let res;
  try {
    res = await fetch(url, {
      method, headers, credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    throw new ApiError(0, { title: "No answer", detail: `The admin server did not answer (${err.message}).` });
  }
  if (res.status === 204) return null;
  const type = res.headers.get("content-type") || "";
  let data = null;
  let text = "";
  if (type.includes("json")) data = await res.json().catch(() => null);
  else text = await res.text().catch(() => "");
  if (!res.ok) {
    const problem = data && typeof data === "object"
      ? data : { title: res.statusText || `HTTP ${res.status}`, status: res.status, detail: text.slice(0, 300) };
    const err = new ApiError(res.status, problem);
    if (res.status === 401 && !(path === "/session" && method !== "DELETE")) sessionEnded();
    throw err;
  }
  return data;
}

/** A problem details box: title, detail, the field it names. */
function problemNode(err, testid = "problem") {
  const p = err instanceof ApiError ? err.problem : { title: "Error", detail: String(err?.message || err) };
  const status = err instanceof ApiError && err.status ? ` (${err.status})` : "";
  return h("div", { class: "problem", role: "alert", "data-testid": testid },
    h("strong", { class: "problem-title" }, `${p.title || "Error"}${status}`),
    p.detail ? h("span", { class: "problem-detail" }, p.detail) : null,
    p.field ? h("span", { class: "problem-field" }, "Field: ", h("code", {}, p.field)) : null);
}

// ---------------------------------------------------------------------------------------
// Notices and confirmation

let noticeTimer = null;

function notify(message, kind = "ok") {
  const box = $("#notice");
  clearTimeout(noticeTimer);
  box.className = `notice notice-${kind}`;
  put(box, 
    message instanceof Node ? message : h("span", {}, message),
    h("button", { type: "button", class: "notice-close", "aria-label": "Dismiss", onclick: clearNotice }, "×"));
  box.hidden = false;
  if (kind === "ok") noticeTimer = setTimeout(clearNotice, 6000);
}

function notifyError(err) {
  notify(problemNode(err, "notice-problem"), "error");
}

function clearNotice() {
  clearTimeout(noticeTimer);
  const box = $("#notice");
  box.hidden = true;
  box.replaceChildren();
}

/** An in-page confirmation (a <dialog>), resolved true on OK. */
function confirmAction(title, text, okLabel = "OK", danger = false) {
  const dlg = $("#confirm");
  $("#confirm-title").textContent = title;
  $("#confirm-text").textContent = text;
  const ok = $("#confirm-ok");
  ok.textContent = okLabel;
  ok.className = `btn ${danger ? "btn-danger" : "btn-primary"}`;
  return new Promise((resolve) => {
    dlg.addEventListener("close", () => resolve(dlg.returnValue === "ok"), { once: true });
    dlg.returnValue = "";
    dlg.showModal();
    ok.focus();
  });
}

// ---------------------------------------------------------------------------------------
// Session, login, layout

function setSession(s) {
  session.user = s.user;
  session.role = s.role;
  session.csrf = s.csrf_token;
  $("#whoami-user").textContent = s.user;
  $("#whoami-role").textContent = s.role;
}

function showLogin(err) {
  for (const fn of view.cleanup.splice(0)) fn();
  $("#boot").hidden = true;
  $("#app").hidden = true;
  $("#login-view").hidden = false;
  const box = $("#login-error");
  if (err) {
    put(box, ...problemNode(err).childNodes);
    box.hidden = false;
  } else {
    box.hidden = true;
  }
  $("#login-password").value = "";
  ($("#login-username").value ? $("#login-password") : $("#login-username")).focus();
}

function showApp() {
  $("#boot").hidden = true;
  $("#login-view").hidden = true;
  $("#app").hidden = false;
  render();
}

function sessionEnded() {
  if (!session.user) return;
  session.user = null;
  session.csrf = null;
  showLogin(new ApiError(401, { title: "Signed out", detail: "Your session has ended; sign in again." }));
}

async function onLogin(ev) {
  ev.preventDefault();
  const button = $("#login-submit");
  const username = $("#login-username").value.trim();
  const password = $("#login-password").value;
  if (!username || !password) {
    showLogin(new ApiError(400, { title: "Missing", detail: "Enter your user name and password.",
      field: username ? "password" : "username" }));
    return;
  }
  button.disabled = true;
  try {
    const s = await api("POST", "/session", { body: { username, password } });
    setSession(s);
    $("#login-password").value = "";
    showApp();
  } catch (err) {
    showLogin(err);
  } finally {
    button.disabled = false;
  }
}

async function onLogout() {
  try {
    await api("DELETE", "/session");
  } catch (err) {
    if (err.status !== 401) { notifyError(err); return; }
  }
  session.user = null;
  session.csrf = null;
  showLogin();
}

// ---------------------------------------------------------------------------------------
// Router

let view = { cleanup: [], alive: false };

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [path, qs] = raw.split("?", 2);
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  return { name: parts[0] || "dashboard", args: parts.slice(1), params: new URLSearchParams(qs || "") };
}

/** Per-view context: timers and streams end when the view is left. */
function newContext() {
  const ctx = {
    alive: true,
    cleanup: [],
    every(ms, fn) {
      const t = setInterval(() => { if (ctx.alive && !document.hidden) fn(); }, ms);
      ctx.cleanup.push(() => clearInterval(t));
    },
    later(ms, fn) {
      const t = setTimeout(() => { if (ctx.alive) fn(); }, ms);
      ctx.cleanup.push(() => clearTimeout(t));
    },
  };
  ctx.cleanup.push(() => { ctx.alive = false; });
  return ctx;
}

const ROUTES = {
  dashboard: dashboardView,
  track: trackView,
  queue: queueView,
  badmail: badmailView,
  message: messageView,
  logs: logsView,
  config: configView,
  explain: explainView,
};

const TITLES = {
  dashboard: "Dashboard", track: "Track", queue: "Queue", badmail: "Badmail", message: "Message",
  logs: "Live logs", config: "Config", explain: "Policy explain",
};

async function render() {
  if (!session.user) return;
  for (const fn of view.cleanup.splice(0)) fn();
  const route = parseHash();
  const fn = ROUTES[route.name] || notFoundView;
  const ctx = newContext();
  view = ctx;
  const navName = route.name === "message" ? "track" : route.name;
  for (const a of document.querySelectorAll(".nav a")) {
    if (a.dataset.route === navName) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  document.title = `${TITLES[route.name] || "Not found"} · relaywarden`;
  const main = $("#main");
  main.replaceChildren();
  main.scrollTop = 0;
  try {
    await fn(main, route, ctx);
  } catch (err) {
    if (ctx.alive) main.append(problemNode(err));
  }
}

function go(hash) {
  if (location.hash === hash) render();
  else location.hash = hash;
}

function notFoundView(main) {
  main.append(h("h1", {}, "Not found"),
    h("p", {}, "No such page. ", h("a", { href: "#/dashboard" }, "Go to the dashboard"), "."));
}

function pageHeader(title, ...extra) {
  return h("header", { class: "page-header" }, h("h1", {}, title), h("div", { class: "page-tools" }, extra));
}

function sectionCard(title, body, attrs = {}) {
  return h("section", { class: "card", ...attrs },
    title ? h("h2", { class: "card-title" }, title) : null, body);
}

function emptyRow(cols, text, testid) {
  return h("tr", { class: "empty", "data-testid": testid }, h("td", { colspan: cols }, text));
}

/** A table whose rows open a message: the row is clickable, its first cell a real link. */
function clickableRow(attrs, hash, cells) {
  const tr = h("tr", { class: "clickable", ...attrs }, cells);
  tr.addEventListener("click", (ev) => {
    if (ev.target.closest("button, a, input, select, label")) return;
    if (window.getSelection()?.toString()) return;   // selecting text, not opening
    go(hash);
  });
  return tr;
}

/** An address that may wrap after its "@" (not in the middle of a word). */
function addr(address) {
  const text = String(address ?? "");
  const at = text.lastIndexOf("@");
  if (at <= 0) return text;
  return [text.slice(0, at + 1), h("wbr", {}), text.slice(at + 1)];
}

function senderNode(sender) {
  return sender ? addr(sender) : h("span", { class: "muted", title: "the null sender (a bounce)" }, "<>");
}

function recipientsCell(recipients, max = 2) {
  const list = recipients || [];
  const shown = list.slice(0, max).map(recipientAddress);
  return h("td", { class: "recipients", title: list.map(recipientAddress).join("\n") },
    shown.map((a, i) => [i ? ", " : "", addr(a)]), list.length > max ? h("span", { class: "more" }, ` +${list.length - max}`) : null);
}

// ---------------------------------------------------------------------------------------
// Dashboard

/** The top of the y axis: four steps of 1, 2 or 5 times a power of ten (whole messages). */
function niceMax(v) {
  const raw = Math.max(1, v) / 4;
  const p = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 5, 10]) if (m * p >= raw) return 4 * Math.max(1, m * p);
  return 40 * p;
}

/** A multi-series line chart as inline SVG, with a hover read-out. */
function lineChart(times, series, label) {
  const W = 760, H = 230, L = 46, R = 14, T = 12, B = 28;
  const n = times.length;
  const wrap = h("div", { class: "chart", "data-testid": "chart" });
  if (!n) {
    wrap.append(h("p", { class: "muted chart-empty" },
      "No data yet: the sampler records the counters every 10 seconds."));
    return wrap;
  }
  let top = 0;
  for (const s of series) for (const v of s.values) top = Math.max(top, Number(v) || 0);
  const max = niceMax(top);
  const x = (i) => L + (n <= 1 ? (W - L - R) / 2 : (i * (W - L - R)) / (n - 1));
  const y = (v) => T + (H - T - B) * (1 - (Number(v) || 0) / max);
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart-svg", role: "img", "aria-label": label });
  for (let k = 0; k <= 4; k += 1) {
    const v = (max * k) / 4;
    root.append(svg("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: k ? "grid" : "axis" }),
      svg("text", { x: L - 6, y: y(v) + 4, class: "tick", "text-anchor": "end" },
        Number.isInteger(v) ? String(v) : v.toFixed(1)));
  }
  const ticks = Math.min(6, n);
  for (let k = 0; k < ticks; k += 1) {
    const i = ticks === 1 ? 0 : Math.round((k * (n - 1)) / (ticks - 1));
    root.append(svg("text", { x: x(i), y: H - 8, class: "tick", "text-anchor": k === 0 ? "start" : k === ticks - 1 ? "end" : "middle" },
      fmtClock(times[i])));
  }
  for (const s of series) {
    const pts = s.values.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
    root.append(svg("polyline", { points: pts, fill: "none", stroke: s.color, "stroke-width": 1.8,
      "stroke-linejoin": "round", class: "series", "data-series": s.key }));
  }
  const guide = svg("line", { x1: 0, x2: 0, y1: T, y2: H - B, class: "guide", visibility: "hidden" });
  const overlay = svg("rect", { x: L, y: T, width: W - L - R, height: H - T - B, fill: "transparent" });
  root.append(guide, overlay);
  const tip = h("div", { class: "chart-tip", hidden: true });
  overlay.addEventListener("mousemove", (ev) => {
    const box = root.getBoundingClientRect();
    const px = ((ev.clientX - box.left) / box.width) * W;
    const i = Math.max(0, Math.min(n - 1, Math.round(((px - L) / (W - L - R)) * (n - 1))));
    guide.setAttribute("x1", x(i)); guide.setAttribute("x2", x(i));
    guide.setAttribute("visibility", "visible");
    put(tip, h("strong", {}, fmtTime(times[i])),
      ...series.map((s) => h("div", {}, h("span", { class: "swatch", style: `background:${s.color}` }),
        `${s.label}: ${fmtNum(s.values[i])}`)));
    tip.hidden = false;
    const left = (x(i) / W) * box.width;
    tip.style.left = `${Math.min(left + 12, box.width - 190)}px`;
  });
  overlay.addEventListener("mouseleave", () => { tip.hidden = true; guide.setAttribute("visibility", "hidden"); });
  wrap.append(root, tip);
  return wrap;
}

async function dashboardView(main, route, ctx) {
  let windowName = route.params.get("window") === "day" ? "day" : "hour";
  const hidden = new Set();
  const updated = h("span", { class: "muted", "data-testid": "dashboard-updated" }, "");
  const winButtons = ["hour", "day"].map((w) => h("button", {
    type: "button", class: "seg", "aria-pressed": String(w === windowName), "data-testid": `window-${w}`,
    onclick: () => {
      windowName = w;
      for (const b of winButtons) b.setAttribute("aria-pressed", String(b.dataset.w === w));
      history.replaceState(null, "", `#/dashboard?window=${w}`);
      refresh();
    },
    dataset: { w },
  }, w === "hour" ? "Last hour" : "Last day"));
  main.append(pageHeader("Dashboard", updated,
    h("div", { class: "segmented", role: "group", "aria-label": "Period" }, winButtons)));

  const errorBox = h("div", { class: "dash-error" });
  const cards = {};
  const cardGrid = h("div", { class: "stat-grid" }, SERIES.map((s) => {
    const value = h("div", { class: "stat-value", "data-testid": `stat-${s.key}`, "data-value": "" }, "…");
    const rate = h("div", { class: "stat-sub", "data-testid": `rate-${s.key}` }, "");
    cards[s.key] = { value, rate };
    return h("div", { class: "stat", style: `--accent:${s.color}` },
      h("div", { class: "stat-label" }, s.label), value, rate);
  }));
  const legend = h("div", { class: "legend", role: "group", "aria-label": "Series shown" }, SERIES.map((s) =>
    h("button", { type: "button", class: "legend-item", "aria-pressed": "true", dataset: { key: s.key },
      onclick: (ev) => {
        const b = ev.currentTarget;
        if (hidden.has(s.key)) hidden.delete(s.key); else hidden.add(s.key);
        b.setAttribute("aria-pressed", String(!hidden.has(s.key)));
        drawChart();
      } },
    h("span", { class: "swatch", style: `background:${s.color}` }), s.label)));
  const chartBox = h("div", {});
  const chartTitle = h("h2", { class: "card-title" }, "Messages per minute");
  const queueBox = h("div", { class: "kv-block", "data-testid": "queue-panel" }, "…");
  const diskBox = h("div", { class: "kv-block", "data-testid": "disk-panel" }, "…");
  const deliveryBox = h("div", { class: "kv-block", "data-testid": "delivery-panel" }, "…");
  const deferredBody = h("tbody", {});
  const listenersBody = h("tbody", {});
  const aboutBox = h("p", { class: "muted small", "data-testid": "about" });

  main.append(errorBox, cardGrid,
    h("section", { class: "card" }, h("div", { class: "card-head" }, chartTitle, legend), chartBox),
    h("div", { class: "grid-3" },
      sectionCard("Queue", queueBox), sectionCard("Disk", diskBox), sectionCard("Delivery", deliveryBox)),
    sectionCard("Top deferred destinations", h("div", { class: "table-wrap" }, h("table", { "data-testid": "top-deferred" },
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Destination"), h("th", { scope: "col", class: "num" }, "Deferred"),
        h("th", { scope: "col" }, "Last error"))), deferredBody))),
    sectionCard("Listeners", h("div", { class: "table-wrap" }, h("table", { "data-testid": "listeners" },
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Name"), h("th", { scope: "col" }, "Address"),
        h("th", { scope: "col" }, "TLS"), h("th", { scope: "col", class: "num" }, "Connections"))), listenersBody))),
    aboutBox);

  let stats = null;
  function drawChart() {
    if (!stats) return;
    const times = (stats.minutes || []).map(toEpochSeconds);
    const series = SERIES.filter((s) => !hidden.has(s.key)).map((s) => ({ ...s, values: stats[s.key] || [] }));
    chartTitle.textContent = `Messages per minute, ${windowName === "day" ? "last 24 hours" : "last hour"}`;
    put(chartBox, lineChart(times, series,
      `Messages per minute over the last ${windowName}: ${SERIES.map((s) => `${s.label} ${sum(stats[s.key])}`).join(", ")}`));
  }

  function showStats(s) {
    stats = s;
    for (const sr of SERIES) {
      const values = s[sr.key] || [];
      const total = sum(values);
      cards[sr.key].value.textContent = fmtNum(total);
      cards[sr.key].value.dataset.value = String(total);
      const last = values.length ? Number(values[values.length - 1]) || 0 : 0;
      cards[sr.key].rate.textContent = `${windowName === "day" ? "last 24 h" : "last hour"} · ${fmtNum(last)} this minute`;
    }
    drawChart();
    const top = s.top_deferred || [];
    put(deferredBody, ...(top.length ? top.map((d) => h("tr", {},
      h("td", {}, h("a", { href: `#/queue?domain=${encodeURIComponent(d.destination)}`, title: "Show this destination's queue" }, d.destination)),
      h("td", { class: "num" }, fmtNum(d.count)),
      h("td", { class: "error-text" }, d.last_error || "—"))) : [emptyRow(3, "Nothing deferred.", "top-deferred-empty")]));
  }

  function showStatus(st) {
    const q = st.queue || {};
    const byState = q.by_state || {};
    // by_state counts recipients of the messages still in the queue; "in the queue" is
    // what still waits for delivery (badmail is shown apart).
    const size = sum(Object.entries(byState).filter(([k]) => !["delivered", "bounced", "badmail", "deleted"].includes(k)).map(([, v]) => v));
    const oldest = q.oldest_age;
    put(queueBox, 
      h("div", { class: "big", "data-testid": "queue-size", "data-value": String(size) }, fmtNum(size)),
      h("div", { class: "muted" }, "recipients waiting"),
      h("dl", { class: "kv" },
        ...Object.entries(byState).flatMap(([k, v]) => [h("dt", {}, badge(k)),
          h("dd", {}, h("a", { href: `#/${k === "badmail" ? "badmail" : `queue?status=${encodeURIComponent(k)}`}` }, fmtNum(v)))]),
        h("dt", {}, "Oldest"), h("dd", { "data-testid": "queue-oldest" }, oldest === null || oldest === undefined ? "—" : fmtAge(oldest))));
    const disk = st.disk || {};
    const free = Number(disk.free_bytes);
    const minFree = Number(disk.min_free) || 0;
    const low = minFree && free < minFree * 2;
    put(diskBox, 
      h("div", { class: `big${low ? " warn" : ""}`, "data-testid": "disk-free", "data-value": String(free) }, fmtBytes(free)),
      h("div", { class: "muted" }, "free"),
      h("dl", { class: "kv" }, h("dt", {}, "Refuses mail under"), h("dd", {}, minFree ? fmtBytes(minFree) : "—")),
      low ? h("p", { class: "warn-text" }, "Low: the relay answers 452 when free space falls under the minimum.") : null);
    const dl = st.delivery || {};
    const dests = dl.destinations || [];
    put(deliveryBox, 
      h("div", { class: "big", "data-testid": "in-flight" }, fmtNum(dl.in_flight)),
      h("div", { class: "muted" }, "deliveries in flight"),
      dests.length ? h("dl", { class: "kv" }, dests.slice(0, 8).flatMap((d) => [h("dt", {}, d.destination), h("dd", {}, fmtNum(d.in_flight))])) : null);
    const listeners = st.listeners || [];
    put(listenersBody, ...(listeners.length ? listeners.map((l) => h("tr", {},
      h("td", {}, l.name), h("td", {}, h("code", {}, `${l.address}:${l.port}`)),
      h("td", {}, l.tls && l.tls !== "none" ? badge(typeof l.tls === "string" ? l.tls : "tls") : h("span", { class: "muted" }, "no")),
      h("td", { class: "num" }, fmtNum(l.connections)))) : [emptyRow(4, "No listener.")]));
    const cfg = st.config || {};
    aboutBox.textContent = `relaywarden ${st.version || ""} · config ${cfg.path || "—"}, loaded ${fmtTime(cfg.loaded_at)}`;
  }

  async function refresh() {
    const [s, st] = await Promise.allSettled([
      api("GET", "/stats", { query: { window: windowName } }), api("GET", "/status")]);
    if (!ctx.alive) return;
    const errors = [s, st].filter((r) => r.status === "rejected").map((r) => r.reason);
    put(errorBox, ...errors.slice(0, 1).map((e) => problemNode(e, "dashboard-problem")));
    if (s.status === "fulfilled") showStats(s.value);
    if (st.status === "fulfilled") showStatus(st.value);
    updated.textContent = `Updated ${fmtTime(Date.now() / 1000).slice(11)}`;
  }

  await refresh();
  ctx.every(POLL_MS, refresh);
}

// ---------------------------------------------------------------------------------------
// Message actions (queue and badmail), shared by the queue, badmail and message pages

const ACTIONS = {
  retry: { label: "Retry now", done: "due now" },
  hold: { label: "Hold", done: "held" },
  release: { label: "Release", done: "released" },
};

async function queueAction(id, action) {
  if (action === "delete" || action === "delete-dsn") {
    const dsn = action === "delete-dsn";
    const ok = await confirmAction(dsn ? "Delete and tell the sender?" : "Delete this message?",
      dsn ? `Message ${id} is removed from the queue and its sender gets a delivery status notification (failed, deleted by the administrator).`
        : `Message ${id} is removed from the queue for good; its sender is not told.`,
      dsn ? "Delete with DSN" : "Delete", true);
    if (!ok) return false;
    const res = await api("DELETE", `/queue/${encodeURIComponent(id)}`, { query: { dsn: dsn ? "true" : "false" } });
    notify(`Message ${id} deleted${res?.dsn_id ? `; the sender gets DSN ${res.dsn_id}` : dsn ? " (a null sender gets no DSN)" : ""}.`);
    return true;
  }
  const res = await api("POST", `/queue/${encodeURIComponent(id)}/${action}`);
  const n = res?.recipients ?? 0;
  notify(`Message ${id}: ${n} recipient${n === 1 ? "" : "s"} ${ACTIONS[action].done}.`);
  return true;
}

async function badmailAction(id, action) {
  if (action === "delete") {
    const ok = await confirmAction("Delete from badmail?",
      `The quarantined recipients of ${id} are dropped and its files removed. Nobody is told.`, "Delete", true);
    if (!ok) return false;
    await api("DELETE", `/badmail/${encodeURIComponent(id)}`);
    notify(`Badmail ${id} deleted.`);
    return true;
  }
  const res = await api("POST", `/badmail/${encodeURIComponent(id)}/release`);
  const n = Array.isArray(res?.recipients) ? res.recipients.length : (res?.recipients ?? null);
  notify(`Badmail ${id} released${n === null ? "" : `: ${n} recipient${n === 1 ? "" : "s"} queued for delivery`}.`);
  return true;
}

/** Runs an action from a button: disabled while it runs, problems shown. */
async function runAction(button, fn, after) {
  button.disabled = true;
  try {
    if (await fn()) await after?.();
  } catch (err) {
    notifyError(err);
  } finally {
    button.disabled = false;
  }
}

function actionButton(label, testid, onclick, extra = "") {
  return h("button", { type: "button", class: `btn btn-small ${extra}`, "data-testid": testid, onclick: (ev) => {
    ev.stopPropagation();
    onclick(ev.currentTarget);
  } }, label);
}

// ---------------------------------------------------------------------------------------
// Queue

async function queueView(main, route, ctx) {
  const f = {
    status: route.params.get("status") || "", domain: route.params.get("domain") || "",
    sender: route.params.get("sender") || "", recipient: route.params.get("recipient") || "",
  };
  const field = (name, label, placeholder) => h("div", { class: "field" },
    h("label", { for: `queue-${name}` }, label),
    h("input", { id: `queue-${name}`, name, type: "search", value: f[name], placeholder, "data-testid": `queue-${name}` }));
  const statusSelect = h("select", { id: "queue-status", name: "status", "data-testid": "queue-status" },
    [["", "Any"], ["queued", "Queued"], ["held", "Held"], ["badmail", "Badmail"], ["delivered", "Delivered"], ["bounced", "Bounced"]].map(([v, t]) =>
      h("option", { value: v, selected: v === f.status }, t)));
  const filterForm = h("form", { class: "filters", role: "search", "aria-label": "Queue filter", "data-testid": "queue-filter",
    onsubmit: (ev) => {
      ev.preventDefault();
      const data = new FormData(ev.currentTarget);
      const q = new URLSearchParams();
      for (const [k, v] of data) if (String(v).trim()) q.set(k, String(v).trim());
      go(`#/queue${q.toString() ? `?${q}` : ""}`);
    } },
  h("div", { class: "field" }, h("label", { for: "queue-status" }, "Status"), statusSelect),
  field("domain", "Domain", "example.com"), field("sender", "Sender", "address or domain"),
  field("recipient", "Recipient", "address or domain"),
  h("div", { class: "field field-buttons" },
    h("button", { type: "submit", class: "btn btn-primary", "data-testid": "queue-apply" }, "Filter"),
    h("a", { class: "btn", href: "#/queue" }, "Clear")));

  const tools = [];
  if (can("operator")) {
    tools.push(h("form", { class: "inline-form", "data-testid": "flush-form", onsubmit: async (ev) => {
      ev.preventDefault();
      const domain = ev.currentTarget.elements.domain.value.trim();
      const btn = ev.currentTarget.querySelector("button");
      await runAction(btn, async () => {
        const res = await api("POST", "/queue/flush", { body: domain ? { domain } : {} });
        notify(`${fmtNum(res?.recipients)} recipient(s) due now${domain ? ` for ${domain}` : ""}.`);
        return true;
      }, load);
    } },
    h("label", { for: "flush-domain" }, "Flush"),
    h("input", { id: "flush-domain", name: "domain", placeholder: "all domains, or one", value: f.domain, size: 18 }),
    h("button", { type: "submit", class: "btn", "data-testid": "flush-submit" }, "Deliver now")));
  }
  if (can("admin")) {
    const bulkSelect = h("select", { id: "bulk-action", "data-testid": "bulk-action" },
      [["retry", "Retry"], ["hold", "Hold"], ["release", "Release"], ["delete", "Delete"]]
        .map(([v, t]) => h("option", { value: v }, t)));
    tools.push(h("div", { class: "inline-form" },
      h("label", { for: "bulk-action" }, "Every match"), bulkSelect,
      h("button", { type: "button", class: "btn", "data-testid": "bulk-submit", onclick: (ev) => runAction(ev.currentTarget, async () => {
        const action = bulkSelect.value;
        const filter = Object.fromEntries(Object.entries(f).filter(([, v]) => v));
        if (!Object.keys(filter).length) {
          throw new ApiError(400, { title: "Filter first", detail: "A bulk action applies to the messages a filter matches: set a status, domain, sender or recipient and press Filter.", field: "status" });
        }
        const described = Object.entries(filter).map(([k, v]) => `${k} ${v}`).join(", ");
        const ok = await confirmAction(`${bulkSelect.selectedOptions[0].textContent} every matching message?`,
          `This applies to every message matching the filter (${described}), not only the ones on this page.`,
          "Apply", action.startsWith("delete"));
        if (!ok) return false;
        const res = await api("POST", "/queue/bulk", { body: { action, ...filter } });
        notify(`${bulkSelect.selectedOptions[0].textContent}: ${fmtNum(res?.messages)} message(s), ${fmtNum(res?.recipients)} recipient(s).`);
        return true;
      }, load) }, "Apply…")));
  }

  const body = h("tbody", {});
  const more = h("button", { type: "button", class: "btn", hidden: true, "data-testid": "queue-more" }, "Load more");
  const count = h("span", { class: "muted", "data-testid": "queue-count" });
  main.append(pageHeader("Queue", count), sectionCard(null, filterForm),
    tools.length ? h("div", { class: "toolbar" }, tools) : null,
    h("section", { class: "card card-flush" }, h("div", { class: "table-wrap" }, h("table", { class: "data", "data-testid": "queue-table" },
      h("thead", {}, h("tr", {}, ["Queue ID", "Received", "Sender", "Recipients", "Status", "Last error", "Actions"]
        .map((t) => h("th", { scope: "col", class: t === "Actions" ? "actions" : null }, t === "Actions" ? h("span", { class: "visually-hidden" }, t) : t)))), body))),
    h("div", { class: "more-row" }, more));

  let next = null;
  let rows = [];
  function row(item) {
    const id = itemId(item);
    const rcpts = item.recipients || [];
    const status = item.status || messageStatus(rcpts);
    const attempts = Math.max(0, ...rcpts.map((r) => Number(r.attempts) || 0));
    const nexts = rcpts.map((r) => r.next_attempt).filter(Boolean).map(Number);
    const error = rcpts.map((r) => r.last_error).find(Boolean) || item.last_error;
    const actions = [];
    if (can("operator")) {
      const after = () => load();
      const statuses = new Set(rcpts.map((r) => r.status));
      if (statuses.has("held") || status === "held") {
        actions.push(actionButton("Release", "row-release", (b) => runAction(b, () => queueAction(id, "release"), after)));
      } else {
        actions.push(actionButton("Retry", "row-retry", (b) => runAction(b, () => queueAction(id, "retry"), after)));
        actions.push(actionButton("Hold", "row-hold", (b) => runAction(b, () => queueAction(id, "hold"), after)));
      }
      actions.push(actionButton("Delete", "row-delete", (b) => runAction(b, () => queueAction(id, "delete"), after), "btn-danger-ghost"));
    }
    return clickableRow({ "data-testid": "queue-row", dataset: { id } }, `#/message/${encodeURIComponent(id)}`, [
      h("td", {}, h("a", { href: `#/message/${encodeURIComponent(id)}`, class: "mono" }, id)),
      h("td", {}, timeNode(item.received_at)),
      h("td", { class: "addr" }, senderNode(item.sender)),
      recipientsCell(rcpts),
      h("td", { class: "status-cell" }, badge(status, "queue-row-status"),
        h("span", { class: "sub" }, `${attempts} attempt${attempts === 1 ? "" : "s"}`),
        nexts.length && status !== "held" && status !== "badmail"
          ? h("span", { class: "sub", title: fmtTime(Math.min(...nexts)) }, `next ${fmtAgo(Math.min(...nexts))}`) : null),
      h("td", { class: "error-text", title: error || "" }, h("div", { class: "clamp" }, error || "")),
      h("td", { class: "actions" }, actions),
    ]);
  }
  async function fetchPage(after) {
    const res = await api("GET", "/queue", { query: { ...f, limit: 100, after } });
    if (!ctx.alive) return;
    rows = after ? rows.concat(res.items || []) : (res.items || []);
    next = res.next || null;
    put(body, ...(rows.length ? rows.map(row) : [emptyRow(7, "No message in the queue matches.", "queue-empty")]));
    more.hidden = !next;
    count.textContent = `${fmtNum(rows.length)}${next ? "+" : ""} message${rows.length === 1 ? "" : "s"}`;
  }
  async function load() {
    try { await fetchPage(null); } catch (err) { if (ctx.alive) put(body, h("tr", {}, h("td", { colspan: 7 }, problemNode(err)))); }
  }
  more.addEventListener("click", () => runAction(more, async () => { await fetchPage(next); return false; }));
  await load();
}

// ---------------------------------------------------------------------------------------
// Badmail

async function badmailView(main, route, ctx) {
  const body = h("tbody", {});
  const more = h("button", { type: "button", class: "btn", hidden: true, "data-testid": "badmail-more" }, "Load more");
  const count = h("span", { class: "muted", "data-testid": "badmail-count" });
  main.append(pageHeader("Badmail", count),
    h("p", { class: "lead" }, "Messages a group's policy quarantined (on_violation = \"badmail\"). Release sends the quarantined recipients on as if the policy had allowed them; delete drops them without telling anyone."),
    h("section", { class: "card card-flush" }, h("div", { class: "table-wrap" }, h("table", { class: "data", "data-testid": "badmail-table" },
      h("thead", {}, h("tr", {}, ["Queue ID", "Received", "Sender and client", "Quarantined recipients", "Rule and reason", "Actions"]
        .map((t) => h("th", { scope: "col", class: t === "Actions" ? "actions" : null }, t === "Actions" ? h("span", { class: "visually-hidden" }, t) : t)))), body))),
    h("div", { class: "more-row" }, more));
  let rows = [];
  let next = null;
  function row(item) {
    const id = itemId(item);
    const all = item.recipients || [];
    const bad = all.filter((r) => typeof r === "string" || !r.status || r.status === "badmail");
    const rules = [...new Set(bad.map((r) => [r.rule || item.rule, r.reason || item.reason].filter(Boolean).join(": ")).filter(Boolean))];
    const actions = can("operator") ? [
      actionButton("Release", "badmail-release", (b) => runAction(b, () => badmailAction(id, "release"), load), "btn-primary"),
      actionButton("Delete", "badmail-delete", (b) => runAction(b, () => badmailAction(id, "delete"), load), "btn-danger-ghost"),
    ] : [];
    return clickableRow({ "data-testid": "badmail-row", dataset: { id } }, `#/message/${encodeURIComponent(id)}`, [
      h("td", {}, h("a", { href: `#/message/${encodeURIComponent(id)}`, class: "mono" }, id)),
      h("td", {}, timeNode(item.received_at)),
      h("td", { class: "addr" }, senderNode(item.sender),
        h("span", { class: "sub mono" }, item.client_ip || "")),
      recipientsCell(bad, 3),
      h("td", { class: "small" }, rules.join("; ") || (item.rule ? `${item.rule}${item.reason ? `: ${item.reason}` : ""}` : "")),
      h("td", { class: "actions" }, actions),
    ]);
  }
  async function fetchPage(after) {
    const res = await api("GET", "/badmail", { query: { limit: 100, after } });
    if (!ctx.alive) return;
    rows = after ? rows.concat(res.items || []) : (res.items || []);
    next = res.next || null;
    put(body, ...(rows.length ? rows.map(row) : [emptyRow(6, "Badmail is empty.", "badmail-empty")]));
    more.hidden = !next;
    count.textContent = `${fmtNum(rows.length)}${next ? "+" : ""} message${rows.length === 1 ? "" : "s"}`;
  }
  async function load() {
    try { await fetchPage(null); } catch (err) { if (ctx.alive) put(body, h("tr", {}, h("td", { colspan: 6 }, problemNode(err)))); }
  }
  more.addEventListener("click", () => runAction(more, async () => { await fetchPage(next); return false; }));
  await load();
}

// ---------------------------------------------------------------------------------------
// Track (message history search)

/** What a search box text means: a list of history queries whose results are merged. */
function trackQueries(text) {
  const q = text.trim();
  if (!q) return { what: "Latest messages", queries: [{}] };
  if (/^<.+>$/.test(q)) return { what: "Message-ID", queries: [{ message_id: q }] };
  if (q.startsWith("@")) return { what: "recipient or sender domain", queries: [{ recipient: q }, { sender: q }] };
  if (q.includes("@")) {
    return { what: "recipient, sender or Message-ID", queries: [{ recipient: q }, { sender: q }, { message_id: q }] };
  }
  if (QUEUE_ID_RE.test(q)) return { what: "queue ID", queries: [{ queue_id: q }] };
  if (IP_RE.test(q) && (q.includes(":") || q.split(".").every((p) => Number(p) <= 255))) {
    return { what: "client IP", queries: [{ client: q }] };
  }
  if (/^[a-z0-9-]+(\.[a-z0-9-]+)+\.?$/i.test(q)) {
    return { what: "recipient or sender domain", queries: [{ recipient: q }, { sender: q }] };
  }
  return { what: "Message-ID", queries: [{ message_id: q }] };
}

let lastTrack = { q: "", status: "", since: "" };

async function trackView(main, route, ctx) {
  const params = route.params;
  const state = {
    q: params.has("q") ? params.get("q") : lastTrack.q,
    status: params.has("status") ? params.get("status") : lastTrack.status,
    since: params.has("since") ? params.get("since") : lastTrack.since,
  };
  const input = h("input", { id: "track-q", name: "q", type: "search", value: state.q, autocomplete: "off",
    spellcheck: "false", placeholder: "user@example.com, example.com, <message-id> or a queue ID",
    "data-testid": "track-search", "aria-describedby": "track-hint" });
  const statusSelect = h("select", { id: "track-status", "data-testid": "track-status" },
    [["", "Any status"], ...["queued", "deferred", "held", "delivered", "bounced", "badmail", "deleted"].map((s) => [s, s])]
      .map(([v, t]) => h("option", { value: v, selected: v === state.status }, t)));
  const sinceSelect = h("select", { id: "track-since", "data-testid": "track-since" },
    [["", "Any time"], ["1h", "Last hour"], ["24h", "Last 24 hours"], ["7d", "Last 7 days"], ["30d", "Last 30 days"]]
      .map(([v, t]) => h("option", { value: v, selected: v === state.since }, t)));
  const hint = h("p", { id: "track-hint", class: "hint", "data-testid": "track-hint" });
  const body = h("tbody", {});
  const more = h("button", { type: "button", class: "btn", hidden: true, "data-testid": "track-more" }, "Load more");
  const count = h("span", { class: "muted", "data-testid": "track-count" });
  const form = h("form", { class: "track-form", role: "search", "aria-label": "Find a message" },
    h("label", { for: "track-q", class: "track-label" }, "Find a message by recipient, sender, Message-ID or queue ID"),
    h("div", { class: "track-row" }, input,
      h("label", { for: "track-status", class: "visually-hidden" }, "Status"), statusSelect,
      h("label", { for: "track-since", class: "visually-hidden" }, "Period"), sinceSelect,
      h("button", { type: "submit", class: "btn btn-primary", "data-testid": "track-submit" }, "Search")),
    hint);
  main.append(pageHeader("Track", count), sectionCard(null, form),
    h("section", { class: "card card-flush" }, h("div", { class: "table-wrap" }, h("table", { class: "data", "data-testid": "track-results" },
      h("thead", {}, h("tr", {}, ["Queue ID", "Received", "Sender", "Recipients", "Subject", "Status", "Client", "Size"]
        .map((t) => h("th", { scope: "col" }, t)))), body))),
    h("div", { class: "more-row" }, more));

  let seq = 0;
  let items = [];
  let cursors = [];

  function row(item) {
    const id = itemId(item);
    return clickableRow({ "data-testid": "track-row", dataset: { id } }, `#/message/${encodeURIComponent(id)}`, [
      h("td", {}, h("a", { href: `#/message/${encodeURIComponent(id)}`, class: "mono", "data-testid": "track-link" }, id)),
      h("td", {}, timeNode(item.received_at)),
      h("td", { class: "addr" }, senderNode(item.sender)),
      recipientsCell(item.recipients),
      h("td", { class: "subject" }, item.subject || ""),
      h("td", {}, badge(item.status, "track-row-status")),
      h("td", { class: "mono" }, item.client_ip || ""),
      h("td", { class: "num" }, item.size ? fmtBytes(item.size) : ""),
    ]);
  }

  function show() {
    items.sort((a, b) => (b.received_at - a.received_at) || String(itemId(b)).localeCompare(String(itemId(a))));
    put(body, ...(items.length ? items.map(row)
      : [emptyRow(8, state.q ? "No message found. The history may take a few seconds to show a message that just arrived." : "No message yet.", "track-empty")]));
    const open = cursors.some(Boolean);
    more.hidden = !open;
    count.textContent = `${fmtNum(items.length)}${open ? "+" : ""} message${items.length === 1 ? "" : "s"}`;
  }

  async function search(append = false) {
    const mine = ++seq;
    const { what, queries } = trackQueries(state.q);
    const common = { status: state.status, since: state.since, limit: 50 };
    hint.textContent = state.q ? `Searching by ${what}.` : "The latest messages; type to search.";
    const runs = queries.map((q, i) => {
      if (append && !cursors[i]) return Promise.resolve(null);
      return api("GET", "/history", { query: { ...q, ...common, before: append ? cursors[i] : undefined } });
    });
    const results = await Promise.allSettled(runs);
    if (mine !== seq || !ctx.alive) return;
    const failed = results.find((r) => r.status === "rejected");
    if (failed && results.every((r) => r.status === "rejected" || !r.value)) {
      put(body, h("tr", {}, h("td", { colspan: 8 }, problemNode(failed.reason, "track-problem"))));
      more.hidden = true;
      return;
    }
    const seen = new Set(append ? items.map(itemId) : []);
    if (!append) items = [];
    results.forEach((r, i) => {
      if (r.status !== "fulfilled" || !r.value) { cursors[i] = null; return; }
      cursors[i] = r.value.next || null;
      for (const item of r.value.items || []) {
        if (seen.has(itemId(item))) continue;
        seen.add(itemId(item));
        items.push(item);
      }
    });
    show();
  }

  function remember() {
    lastTrack = { ...state };
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(state)) if (v) q.set(k, v);
    history.replaceState(null, "", `#/track${q.toString() ? `?${q}` : ""}`);
  }

  let timer = null;
  const later = () => {
    clearTimeout(timer);
    timer = setTimeout(() => { if (ctx.alive) { state.q = input.value; remember(); search(); } }, 250);
  };
  ctx.cleanup.push(() => clearTimeout(timer));
  input.addEventListener("input", later);
  input.addEventListener("keydown", (ev) => {
    if (ev.key === "ArrowDown") {
      const first = body.querySelector("a");
      if (first) { ev.preventDefault(); first.focus(); }
    }
  });
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    clearTimeout(timer);
    state.q = input.value;
    remember();
    search();
  });
  for (const [sel, key] of [[statusSelect, "status"], [sinceSelect, "since"]]) {
    sel.addEventListener("change", () => { state[key] = sel.value; state.q = input.value; remember(); search(); });
  }
  more.addEventListener("click", () => runAction(more, async () => { await search(true); return false; }));

  input.focus();
  input.select();
  await search();
}

// ---------------------------------------------------------------------------------------
// Message page: summary, recipients, actions, timeline

function eventTitle(e) {
  const d = e.data || {};
  if (e.kind === "received") return "Received";
  if (e.kind === "attempt") return `Delivery attempt: ${d.outcome || "?"}`;
  if (e.kind === "admin") return `Admin: ${d.action || "?"}`;
  return e.kind;
}

function eventBody(e) {
  const d = e.data || {};
  const parts = [];
  const kv = (k, v) => (v === undefined || v === null || v === "" ? null : [h("dt", {}, k), h("dd", {}, v)]);
  if (e.kind === "received") {
    const rcpts = d.recipients || [];
    parts.push(h("dl", { class: "kv kv-inline" },
      kv("From", d.sender === "" ? "<>" : d.sender),
      kv("Client", [d.client_ip, d.client_name ? `(${d.client_name})` : ""].filter(Boolean).join(" ")),
      kv("HELO", d.helo), kv("Listener", d.listener), kv("TLS", typeof d.tls === "object" && d.tls ? JSON.stringify(d.tls) : d.tls),
      kv("AUTH", d.auth_user), kv("Size", d.size ? fmtBytes(d.size) : null), kv("Message-ID", d.message_id),
      kv("Subject", d.subject)));
    if (rcpts.length) {
      parts.push(h("ul", { class: "event-rcpts" }, rcpts.map((r) => {
        const [address, status, rule, reason] = Array.isArray(r) ? r : [r.address, r.status, r.rule, r.reason];
        return h("li", {}, h("span", { class: "addr" }, address), " ", badge(status),
          rule ? h("span", { class: "muted small" }, ` ${rule}${reason ? `: ${reason}` : ""}`) : null);
      })));
    }
  } else if (e.kind === "attempt") {
    parts.push(h("dl", { class: "kv kv-inline" },
      kv("To", d.to || e.recipient), kv("Remote", d.remote), kv("TLS", typeof d.tls === "object" && d.tls ? JSON.stringify(d.tls) : d.tls),
      kv("Reply", d.reply ? h("code", { class: "reply" }, d.reply) : null), kv("Remote ID", d.remote_id),
      kv("Next attempt", d.next_attempt ? fmtTime(d.next_attempt) : null),
      kv("DSN", d.dsn_id ? h("a", { href: `#/message/${encodeURIComponent(d.dsn_id)}`, class: "mono" }, d.dsn_id) : null)));
  } else if (e.kind === "admin") {
    const rcpts = (d.recipients || []).filter((r) => r !== "-");
    parts.push(h("dl", { class: "kv kv-inline" },
      kv("By", d.by || "unknown"), kv("Recipients", rcpts.join(", ")), kv("Domain", d.domain),
      kv("DSN", d.dsn_id ? h("a", { href: `#/message/${encodeURIComponent(d.dsn_id)}`, class: "mono" }, d.dsn_id) : null)));
  }
  parts.push(h("details", { class: "raw" }, h("summary", {}, "Raw event"), h("pre", {}, JSON.stringify(d, null, 2))));
  return parts;
}

function eventTone(e) {
  const d = e.data || {};
  if (e.kind === "attempt") return d.outcome || "deferred";
  if (e.kind === "admin") return { hold: "held", release: "queued", "badmail-release": "queued" }[d.action] || "admin";
  return e.kind;
}

async function messageView(main, route, ctx) {
  const id = route.args[0] || "";
  const enc = encodeURIComponent(id);
  const statusHolder = h("span", { class: "title-status" });
  const head = h("header", { class: "page-header" },
    h("div", {}, h("a", { href: "#/track", class: "back" }, "← Back to search"),
    h("h1", {}, "Message ", h("span", { class: "mono", "data-testid": "message-id" }, id), statusHolder)),
    h("div", { class: "page-tools" },
      h("button", { type: "button", class: "btn btn-small", "data-testid": "message-refresh", onclick: () => load() }, "Refresh")));
  const actionsBox = h("div", { class: "actions-bar", "data-testid": "message-actions" });
  const content = h("div", { "data-testid": "message-body" }, h("p", { class: "muted" }, "Loading…"));
  main.append(head, actionsBox, content);

  const opt = (p) => p.then((v) => ({ ok: true, v }), (e) => ({ ok: false, e }));
  async function load() {
    const [hist, queued, bad] = await Promise.all([
      opt(api("GET", `/history/${enc}`)), opt(api("GET", `/queue/${enc}`)), opt(api("GET", `/badmail/${enc}`))]);
    if (!ctx.alive) return;
    const fatal = [hist, queued, bad].find((r) => !r.ok && r.e.status !== 404);
    if (!hist.ok && !queued.ok && !bad.ok) {
      statusHolder.replaceChildren();
      actionsBox.replaceChildren();
      put(content, fatal ? problemNode(fatal.e)
        : h("div", { class: "card", "data-testid": "message-missing" }, h("p", {}, `No message ${id} in the queue or in the history. `
          + "The history keeps finished messages for history.keep_days; a message that just arrived may take a few seconds to appear.")));
      return;
    }
    const t = hist.ok ? hist.v : null;
    const q = queued.ok ? queued.v : null;
    const b = bad.ok ? bad.v : null;
    const live = q || b;
    const status = live ? messageStatus(live.recipients) : (t?.status || "unknown");
    put(statusHolder, badge(status, "message-status"));
    renderActions(q, b);

    const m = { ...(t || {}), ...(live || {}) };
    const summary = h("dl", { class: "kv kv-grid", "data-testid": "message-summary" },
      [["Received", timeNode(m.received_at, true)], ["From", m.sender === "" ? "<> (null sender)" : m.sender],
        ["Subject", m.subject], ["Message-ID", m.message_id ? h("code", {}, m.message_id) : null],
        ["Client", [m.client_ip, m.client_name ? `(${m.client_name})` : ""].filter(Boolean).join(" ")],
        ["HELO", m.helo], ["Listener", m.listener], ["TLS", typeof m.tls === "object" && m.tls ? JSON.stringify(m.tls) : m.tls],
        ["AUTH user", m.auth_user], ["Size", m.size ? fmtBytes(m.size) : null],
        ["Where", live ? (q ? "in the queue" : "in badmail") : "history only (no longer queued)"]]
        .filter(([, v]) => v !== undefined && v !== null && v !== "")
        .flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));

    // Recipients: the queue's live state where it has one, else the history's.
    const hRcpts = new Map((t?.recipients || []).map((r) => [r.address, r]));
    const lRcpts = live?.recipients || [];
    const rcpts = lRcpts.length ? lRcpts.map((r) => ({ ...(hRcpts.get(r.address) || {}), ...r, status: recipientStatus(r) }))
      : (t?.recipients || []);
    const rcptTable = h("table", { class: "data", "data-testid": "message-recipients" },
      h("thead", {}, h("tr", {}, ["Recipient", "Status", "Attempts", "Next attempt", "Last reply", "Remote", "Rule"].map((x) => h("th", { scope: "col" }, x)))),
      h("tbody", {}, rcpts.map((r) => h("tr", { "data-testid": "recipient-row" },
        h("td", { class: "addr" }, r.address),
        h("td", {}, badge(r.status, "recipient-status"), r.held_by ? h("span", { class: "muted small" }, ` by ${r.held_by}`) : null),
        h("td", { class: "num" }, r.attempts ?? ""),
        h("td", {}, r.next_attempt && r.status !== "held" ? timeNode(r.next_attempt) : "—"),
        h("td", { class: "error-text" }, r.last_error || r.last_reply || ""),
        h("td", { class: "mono small" }, r.remote_mta || r.remote || ""),
        h("td", { class: "small" }, [r.rule, r.reason].filter(Boolean).join(": "))))));

    const events = t?.events || [];
    const timeline = h("ol", { class: "timeline", "data-testid": "timeline" }, events.length
      ? events.map((e) => h("li", { class: `tl-item tl-${eventTone(e)}`, "data-testid": "timeline-event", dataset: { kind: e.kind, action: e.data?.action || e.data?.outcome || "" } },
        h("div", { class: "tl-dot", "aria-hidden": "true" }),
        h("div", { class: "tl-main" },
          h("div", { class: "tl-head" }, h("strong", {}, eventTitle(e)), " ", timeNode(e.at, true)),
          eventBody(e))))
      : h("li", { class: "muted" }, t ? "No event recorded." : "The history has not recorded this message yet (it catches up within seconds)."));

    const headers = live?.headers || [];
    put(content, 
      sectionCard("Summary", summary),
      sectionCard("Recipients", h("div", { class: "table-wrap" }, rcptTable)),
      sectionCard("Timeline", timeline),
      headers.length ? sectionCard("Headers", h("details", {}, h("summary", {}, `${headers.length} header fields`),
        h("table", { class: "data headers" }, h("tbody", {}, headers.map(([k, v]) => h("tr", {}, h("th", { scope: "row" }, k), h("td", {}, v))))))) : null);
  }

  function renderActions(q, b) {
    const buttons = [];
    const op = can("operator");
    const after = async () => { await load(); ctx.later(1500, load); };
    if (q) {
      const st = new Set((q.recipients || []).map((r) => r.status));
      if (op) {
        buttons.push(
          actionButton("Retry now", "action-retry", (el) => runAction(el, () => queueAction(id, "retry"), after)),
          actionButton("Hold", "action-hold", (el) => runAction(el, () => queueAction(id, "hold"), after)),
          actionButton("Release", "action-release", (el) => runAction(el, () => queueAction(id, "release"), after)),
          actionButton("Delete", "action-delete", (el) => runAction(el, () => queueAction(id, "delete"), after), "btn-danger-ghost"),
          actionButton("Delete with DSN", "action-delete-dsn", (el) => runAction(el, () => queueAction(id, "delete-dsn"), after), "btn-danger-ghost"));
        const [retry, hold, release] = buttons;
        retry.disabled = !st.has("queued");
        hold.disabled = !st.has("queued");
        release.disabled = !st.has("held");
        for (const [btn, why] of [[retry, "Nothing waits for delivery"], [hold, "Nothing left to hold"], [release, "Nothing is held"]]) {
          if (btn.disabled) btn.title = why;
        }
      }
      buttons.push(h("a", { class: "btn btn-small btn-ghost", href: `${API}/queue/${enc}/eml`, download: `${id}.eml`, "data-testid": "action-eml" }, "Download .eml"));
    }
    if (b && (b.recipients || []).some((r) => r.status === "badmail")) {
      if (op) {
        buttons.push(
          actionButton("Release from badmail", "action-badmail-release", (el) => runAction(el, () => badmailAction(id, "release"), after), "btn-primary"),
          actionButton("Delete from badmail", "action-badmail-delete", (el) => runAction(el, () => badmailAction(id, "delete"), after), "btn-danger-ghost"));
      }
      if (!q) buttons.push(h("a", { class: "btn btn-small btn-ghost", href: `${API}/badmail/${enc}/eml`, download: `${id}.eml` }, "Download .eml"));
    }
    put(actionsBox, ...buttons);
    actionsBox.hidden = !buttons.length;
  }

  await load();
  ctx.every(POLL_MS, load);
}

// ---------------------------------------------------------------------------------------
// Live logs (server-sent events)

const MAX_LOG_LINES = 2000;

function logLine(text) {
  const li = h("li", {});
  const ev = /\bevent=([a-z_-]+)/.exec(text);
  if (ev) li.classList.add(`ev-${ev[1]}`);
  // Queue IDs (id=... in the mail log) become links to the message page.
  const re = /\b(id=)([0-9BCDFGHJKLMNPQRSTVWXZ]{14,26})\b/g;
  let last = 0;
  for (let m = re.exec(text); m; m = re.exec(text)) {
    li.append(text.slice(last, m.index + m[1].length),
      h("a", { href: `#/message/${encodeURIComponent(m[2])}`, class: "mono" }, m[2]));
    last = m.index + m[0].length;
  }
  li.append(text.slice(last));
  return li;
}

function eventText(data) {
  try {
    const v = JSON.parse(data);
    if (typeof v === "string") return v;
    if (v && typeof v === "object") return v.line ?? v.text ?? v.message ?? JSON.stringify(v);
  } catch { /* a plain line */ }
  return data;
}

async function logsView(main, route, ctx) {
  const kinds = ["mail", "protocol", "outbound"];
  let which = kinds.includes(route.params.get("log")) ? route.params.get("log") : "mail";
  let paused = false;
  let buffered = [];
  let es = null;
  const status = h("span", { class: "badge badge-muted", "data-testid": "log-status" }, "connecting");
  const list = h("ol", { class: "log-lines", "data-testid": "log-lines", "aria-live": "off" });
  const scroller = h("div", { class: "log-box", tabindex: "0", "aria-label": "Log lines" }, list);
  const filter = h("input", { id: "log-filter", type: "search", placeholder: "Show only lines containing…", "data-testid": "log-filter" });
  const pauseBtn = h("button", { type: "button", class: "btn", "aria-pressed": "false", "data-testid": "log-pause" }, "Pause");
  const logButtons = [["mail", "Mail log"], ["protocol", "Protocol log"], ["outbound", "Outbound log"]].map(([v, t]) => h("button", {
    type: "button", class: "seg", "aria-pressed": String(v === which), "data-testid": `log-${v}`, dataset: { log: v },
    onclick: () => { if (which !== v) { which = v; for (const b of logButtons) b.setAttribute("aria-pressed", String(b.dataset.log === v)); history.replaceState(null, "", `#/logs?log=${v}`); connect(); } },
  }, t));
  const counter = h("span", { class: "muted small", "data-testid": "log-count" }, "");
  main.append(pageHeader("Live logs", status),
    h("div", { class: "toolbar" },
      h("div", { class: "segmented", role: "group", "aria-label": "Log" }, logButtons),
      h("label", { for: "log-filter", class: "visually-hidden" }, "Filter"), filter,
      pauseBtn,
      h("button", { type: "button", class: "btn", "data-testid": "log-clear", onclick: () => { list.replaceChildren(); buffered = []; counted(); } }, "Clear"),
      counter),
    h("p", { class: "hint" }, "New lines appear as the relay writes them (it flushes its logs every second). Queue IDs link to the message page."),
    scroller);

  const counted = () => { counter.textContent = `${fmtNum(list.childElementCount)} lines${buffered.length ? `, ${buffered.length} waiting` : ""}`; };
  const matches = (text) => !filter.value || text.toLowerCase().includes(filter.value.toLowerCase());

  function add(texts) {
    const atBottom = scroller.scrollTop + scroller.clientHeight >= scroller.scrollHeight - 30;
    const frag = document.createDocumentFragment();
    for (const t of texts) {
      const li = logLine(t);
      li.hidden = !matches(t);
      frag.append(li);
    }
    list.append(frag);
    while (list.childElementCount > MAX_LOG_LINES) list.firstElementChild.remove();
    if (atBottom) scroller.scrollTop = scroller.scrollHeight;
    counted();
  }

  function onData(ev) {
    const text = eventText(ev.data);
    for (const line of String(text).split("\n")) {
      if (!line) continue;
      if (paused) buffered.push(line); else add([line]);
    }
    if (paused) counted();
  }

  function setStatus(text, tone) {
    status.textContent = text;
    status.className = `badge badge-${tone}`;
  }

  function connect() {
    es?.close();
    list.replaceChildren();
    buffered = [];
    counted();
    setStatus("connecting", "muted");
    es = new EventSource(`${API}/log/stream?log=${which}`, { withCredentials: true });
    es.onopen = () => setStatus("live", "live");
    es.onmessage = onData;
    for (const name of ["log", "line", which]) es.addEventListener(name, onData);
    es.onerror = () => {
      if (!ctx.alive) return;
      if (es.readyState === EventSource.CLOSED) {
        setStatus("disconnected", "bounced");
        // EventSource gives no status: ask the API whether the session is still good.
        api("GET", "/session").catch(() => {});
      } else {
        setStatus("reconnecting", "deferred");
      }
    };
  }

  pauseBtn.addEventListener("click", () => {
    paused = !paused;
    pauseBtn.setAttribute("aria-pressed", String(paused));
    pauseBtn.textContent = paused ? "Resume" : "Pause";
    if (!paused && buffered.length) { const b = buffered; buffered = []; add(b); }
    counted();
  });
  filter.addEventListener("input", () => {
    for (const li of list.children) li.hidden = !matches(li.textContent);
  });
  ctx.cleanup.push(() => es?.close());
  connect();
}

// ---------------------------------------------------------------------------------------
// Config (read-only) and policy explain

const BARE_KEY = /^[A-Za-z0-9_-]+$/;
const tomlKey = (k) => (BARE_KEY.test(k) ? k : JSON.stringify(k));
const isTable = (v) => v !== null && typeof v === "object" && !Array.isArray(v);
const isTableArray = (v) => Array.isArray(v) && v.length > 0 && v.every(isTable);

/** The effective config shown as TOML, the way an admin writes it. */
function toToml(obj, path = []) {
  const lines = [];
  const scalars = Object.entries(obj).filter(([, v]) => !isTable(v) && !isTableArray(v));
  const tables = Object.entries(obj).filter(([, v]) => isTable(v));
  const arrays = Object.entries(obj).filter(([, v]) => isTableArray(v));
  if (path.length && (scalars.length || (!tables.length && !arrays.length))) lines.push(`[${path.map(tomlKey).join(".")}]`);
  for (const [k, v] of scalars) {
    lines.push(v === null ? `# ${tomlKey(k)} = (not set)` : `${tomlKey(k)} = ${JSON.stringify(v)}`);
  }
  if (path.length && (scalars.length || (!tables.length && !arrays.length))) lines.push("");
  for (const [k, v] of tables) lines.push(toToml(v, [...path, k]));
  for (const [k, v] of arrays) {
    for (const item of v) {
      lines.push(`[[${[...path, k].map(tomlKey).join(".")}]]`);
      for (const [ik, iv] of Object.entries(item)) lines.push(`${tomlKey(ik)} = ${JSON.stringify(iv)}`);
      lines.push("");
    }
  }
  return lines.join("\n");
}

async function configView(main, route, ctx) {
  const [cfgR, stR] = await Promise.allSettled([api("GET", "/config"), api("GET", "/status")]);
  if (!ctx.alive) return;
  const wrapped = cfgR.status === "fulfilled" && cfgR.value && isTable(cfgR.value.config) && "source" in cfgR.value;
  const info = { ...(stR.status === "fulfilled" ? (stR.value.config || {}) : {}),
    ...(wrapped ? { path: cfgR.value.source, loaded_at: cfgR.value.loaded_at } : {}) };
  main.append(pageHeader("Effective config", h("span", { class: "badge badge-muted" }, "read-only")),
    h("p", { class: "lead", "data-testid": "config-source" },
      `From ${info.path || "—"}, loaded ${fmtTime(info.loaded_at)}. Defaults are filled in; passwords and secrets show as "***". `
      + "Change the file and reload the relay to change it."));
  if (cfgR.status === "rejected") { main.append(problemNode(cfgR.reason)); return; }
  const cfg = (wrapped ? cfgR.value.config : cfgR.value) || {};
  const filter = h("input", { id: "config-filter", type: "search", placeholder: "Find a setting (e.g. max_message_size)", "data-testid": "config-filter" });
  const sections = Object.entries(cfg).map(([k, v]) => {
    const text = isTable(v) ? toToml(v, [k]) : `${tomlKey(k)} = ${JSON.stringify(v)}`;
    return h("details", { class: "config-section", open: true, "data-testid": "config-section", dataset: { section: k } },
      h("summary", {}, k), h("pre", { class: "config-text" }, text.trim()));
  });
  filter.addEventListener("input", () => {
    const needle = filter.value.toLowerCase();
    for (const s of sections) {
      const hit = !needle || s.textContent.toLowerCase().includes(needle);
      s.hidden = !hit;
      if (needle && hit) s.open = true;
    }
  });
  main.append(h("div", { class: "toolbar" }, h("label", { for: "config-filter", class: "visually-hidden" }, "Find a setting"), filter,
    h("button", { type: "button", class: "btn", onclick: () => sections.forEach((s) => { s.open = false; }) }, "Collapse all"),
    h("button", { type: "button", class: "btn", onclick: () => sections.forEach((s) => { s.open = true; }) }, "Expand all")),
  h("div", { class: "config", "data-testid": "config-view" }, sections));
}

let lastExplain = { listener: "", client: "", name: "", user: "", groups: "", tls: false, from: "", to: "" };

function decisionNode(step, testid) {
  if (step === null || step === undefined) return h("span", { class: "muted" }, "—");
  if (typeof step !== "object") return h("span", {}, String(step));
  return h("div", { class: "decision", "data-testid": testid },
    badge(step.decision ?? "?", testid ? `${testid}-decision` : undefined),
    step.code ? h("code", {}, `${step.code}${step.enhanced ? ` ${step.enhanced}` : ""}`) : null,
    step.rule ? h("span", {}, " rule ", h("code", {}, step.rule)) : null,
    step.reason ? h("span", { class: "muted" }, ` ${step.reason}`) : null);
}

async function explainView(main, route, ctx) {
  let listeners = [];
  try {
    const res = await api("GET", "/config");
    const cfg = res && isTable(res.config) && "source" in res ? res.config : res;
    listeners = Object.keys(cfg?.listeners || {});
  } catch { /* a viewer without config access still gets a text field */ }
  if (!ctx.alive) return;
  const v = lastExplain;
  const listenerInput = listeners.length
    ? h("select", { id: "explain-listener", name: "listener", "data-testid": "explain-listener", required: true },
      listeners.map((n) => h("option", { value: n, selected: n === v.listener }, n)))
    : h("input", { id: "explain-listener", name: "listener", value: v.listener, required: true, "data-testid": "explain-listener" });
  const field = (name, label, attrs = {}) => h("div", { class: "field" },
    h("label", { for: `explain-${name}` }, label),
    h("input", { id: `explain-${name}`, name, value: v[name], "data-testid": `explain-${name}`, ...attrs }));
  const result = h("div", { "data-testid": "explain-result", "aria-live": "polite" });
  const form = h("form", { class: "form-grid", "data-testid": "explain-form", novalidate: true },
    h("div", { class: "field" }, h("label", { for: "explain-listener" }, "Listener"), listenerInput),
    field("client", "Client IP address", { required: true, placeholder: "192.0.2.10", spellcheck: "false" }),
    field("name", "Verified client name (optional)", { placeholder: "scanner.example.com" }),
    field("user", "Authenticated user (optional)"),
    field("groups", "Directory groups (optional)", { placeholder: "scanners, printers", title: "The user's LDAP/AD groups, separated by commas" }),
    field("from", "MAIL FROM", { placeholder: "app@example.com, or <> for the null sender", spellcheck: "false" }),
    field("to", "RCPT TO", { required: true, placeholder: "user@example.com", spellcheck: "false" }),
    h("div", { class: "field field-check" },
      h("input", { id: "explain-tls", name: "tls", type: "checkbox", checked: v.tls, "data-testid": "explain-tls" }),
      h("label", { for: "explain-tls" }, "The client uses TLS")),
    h("div", { class: "field field-buttons" }, h("button", { type: "submit", class: "btn btn-primary", "data-testid": "explain-submit" }, "Explain")));
  main.append(pageHeader("Policy explain"),
    h("p", { class: "lead" }, "What the relay would answer this client, sender and recipient, and the rule that decides — the same as ",
      h("code", {}, "relaywarden policy explain"), "."),
    sectionCard(null, form), result);

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
    const data = new FormData(form);
    const values = {
      listener: String(data.get("listener") || "").trim(), client: String(data.get("client") || "").trim(),
      name: String(data.get("name") || "").trim(), user: String(data.get("user") || "").trim(),
      groups: String(data.get("groups") || "").trim(),
      tls: form.elements.tls.checked, from: String(data.get("from") || "").trim(), to: String(data.get("to") || "").trim(),
    };
    lastExplain = values;
    const body = { listener: values.listener, client: values.client, from: values.from, to: values.to, tls: values.tls };
    if (values.name) body.name = values.name;
    if (values.user) body.user = values.user;
    if (values.groups) body.groups = values.groups.split(",").map((g) => g.trim()).filter(Boolean);
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      const res = await api("POST", "/explain", { body });
      if (!ctx.alive) return;
      put(result, sectionCard("Decision", h("div", {},
        h("dl", { class: "kv kv-grid" },
          h("dt", {}, "Connection"), h("dd", {}, decisionNode(res.connect, "explain-connect")),
          res.auth ? h("dt", {}, "AUTH") : null, res.auth ? h("dd", {}, decisionNode(res.auth, "explain-auth")) : null,
          h("dt", {}, "Sender"), h("dd", {}, decisionNode(res.sender, "explain-sender")),
          h("dt", {}, "Recipient"), h("dd", {}, decisionNode(res.recipient, "explain-recipient"))),
        // The last step reached decides: a refused connection, AUTH or MAIL (TLS or AUTH first).
        h("div", { class: "big-decision" }, "Decision: ",
          badge((res.recipient ?? res.sender ?? res.auth ?? res.connect)?.decision ?? "?", "explain-decision")),
        res.text ? h("pre", { class: "explain-text", "data-testid": "explain-text" }, res.text) : null)));
    } catch (err) {
      if (!ctx.alive) return;
      put(result, problemNode(err, "explain-problem"));
      const name = err.problem?.field;
      const el = name && (form.elements[name] || form.elements[String(name).split(".").pop()]);
      if (el && el.focus) { el.setAttribute("aria-invalid", "true"); el.focus(); }
    } finally {
      button.disabled = false;
    }
  });
  (listeners.length ? form.elements.client : listenerInput).focus();
}

// ---------------------------------------------------------------------------------------
// Start

async function boot() {
  $("#login-form").addEventListener("submit", onLogin);
  $("#logout").addEventListener("click", onLogout);
  window.addEventListener("hashchange", () => { clearNotice(); render(); });
  try {
    setSession(await api("GET", "/session"));
    showApp();
  } catch (err) {
    showLogin(err.status === 401 ? null : err);
  }
}

boot();
