// tlsgw's live status page: polls status.json (POLL_MS) and redraws in place; no library.
// The token, when the endpoint has one, is asked for once and kept in sessionStorage (this tab
// only), sent as "Authorization: Bearer": never a cookie, so another site cannot make the
// browser act with it.
"use strict";
const POLL_MS = 750;
const TOKEN_KEY = "tlsgw-admin-token";
const previous = new Map();  // counter key -> [value, time] for the per-second rates
let inFlight = false;

function $(sel) { return document.querySelector(sel); }

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function headers() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { "Authorization": "Bearer " + token } : {};
}

// a figure of status.json: a number, or a {label: number} breakdown (summed); undefined if absent
function fig(...candidates) {
  for (const v of candidates) {
    if (typeof v === "number") return v;
    if (v && typeof v === "object") return Object.values(v).reduce((a, b) => a + Number(b), 0);
  }
  return undefined;
}

function num(v) { return v === undefined || v === null ? "–" : Number(v).toLocaleString("en"); }

function bytes(v) {
  if (v === undefined || v === null) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0, x = Number(v);
  while (x >= 1024 && i < units.length - 1) { x /= 1024; i++; }
  return (i ? x.toFixed(1) : String(x)) + " " + units[i];
}

function rate(key, value, now) {
  if (value === undefined || value === null) return "–";
  const was = previous.get(key);
  previous.set(key, [value, now]);
  if (!was || now <= was[1] || value < was[0]) return "–";
  return ((value - was[0]) / ((now - was[1]) / 1000)).toFixed(1);
}

function ago(ts) {
  if (!ts) return "";
  const s = Math.max(0, Math.round(Date.now() / 1000 - ts));
  return s < 60 ? s + " s ago" : s < 3600 ? Math.round(s / 60) + " min ago"
    : Math.round(s / 3600) + " h ago";
}

function banner(text, ok) {
  const b = $("#banner");
  b.hidden = !text;
  b.textContent = text || "";
  b.className = ok ? "banner ok" : "banner";
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

function drawListeners(st, now) {
  const servers = new Map((st.servers || []).map((s) => [s.name, s]));
  const sum = (l, field) => fig(l[field], ...[(l.servers || []).reduce((acc, name) => {
    const v = fig((servers.get(name) || {})[field]);
    return v === undefined ? acc : (acc || 0) + v;
  }, undefined)]);
  fill($("#listeners tbody"), (st.listeners || []).map((l) => {
    const total = fig(l.connections_total, l.sessions_total);
    return el("tr", { "data-listen": l.listen },
      el("td", {}, l.listen), el("td", {}, l.address || ""), el("td", {}, l.ssl ? "ssl" : ""),
      el("td", {}, (l.servers || []).join(", ")),
      el("td", { class: "n" }, num(fig(l.connections_active, l.active))),
      el("td", { class: "n" }, rate("l:" + l.listen, total, now)),
      el("td", { class: "n" }, num(total)),
      el("td", { class: "n" }, bytes(sum(l, "bytes_received"))),
      el("td", { class: "n" }, bytes(sum(l, "bytes_sent"))));
  }));
}

async function act(upstream, server, action, button) {
  button.disabled = true;
  const url = "upstreams/" + encodeURIComponent(upstream) + "/servers/" +
    encodeURIComponent(server) + "/" + action;
  try {
    const r = await fetch(url, { method: "POST", headers: headers() });
    if (r.status === 401) { askToken(); return; }
    if (r.ok) {
      const body = await r.json();
      banner(`${server} of "${upstream}" is ${body.state}`, true);
    } else {
      banner(`${action} ${server}: ${r.status} ${(await r.text()).trim()}`);
    }
  } catch (e) {
    banner(`${action} ${server}: ${e}`);
  } finally {
    button.disabled = false;
    poll();
  }
}

function drawUpstreams(st, now) {
  const box = $("#upstreams");
  const tables = (st.upstreams || []).map((u) => {
    const rows = (u.peers || []).map((s) => {
      const state = s.state || "up";
      const buttons = [["drain", "draining"], ["disable", "disabled"], ["enable", "enabled"]]
        .map(([action, target]) => {
          const b = el("button", { type: "button", "data-action": action,
            title: `${action} ${s.server}` }, action);
          if ((s.admin_state || "enabled") === target) b.disabled = true;
          b.addEventListener("click", () => act(u.name, s.server, action, b));
          return b;
        });
      return el("tr", { class: state, "data-server": s.server, "data-peer": s.peer },
        el("td", {}, s.server), el("td", {}, s.peer || ""),
        el("td", {}, el("span", { class: "state " + state, "data-state": state }, state)),
        el("td", {}, s.why || ""),
        el("td", { class: "n" }, num(fig(s.sessions_active, s.active))),
        el("td", { class: "n" }, rate("p:" + u.name + "/" + s.peer,
          fig(s.sessions_total, s.sessions), now)),
        el("td", { class: "n" }, num(fig(s.sessions_total, s.sessions))),
        el("td", { class: "n" }, num(fig(s.connect_failures))),
        el("td", { class: "n" }, bytes(s.bytes_received)),
        el("td", { class: "n" }, bytes(s.bytes_sent)),
        el("td", {}, ...buttons));
    });
    return el("div", { class: "upstream", "data-upstream": u.name },
      el("h3", {}, u.name + " ", el("span", { class: "muted" },
        [u.method, u.health_check ? "health_check" : ""].filter(Boolean).join(", "))),
      el("table", {},
        el("thead", {}, el("tr", {}, ...["server", "address", "state", "", "active",
          "sessions/s", "sessions", "connect failures", "received", "sent", "actions"]
          .map((h, i) => el("th", { class: i >= 4 && i <= 9 ? "n" : "" }, h)))),
        el("tbody", {}, ...rows)));
  });
  box.replaceChildren(...tables);
}

function drawCertificates(st) {
  fill($("#certificates tbody"), (st.certificates || []).map((c) => {
    const days = c.days_left;
    const cls = days === undefined ? "" : days < 7 ? "bad" : days < 30 ? "warn" : "";
    return el("tr", {}, el("td", {}, c.file), el("td", {}, c.error || c.subject || ""),
      el("td", {}, c.role || ""), el("td", {}, c.not_after || ""),
      el("td", { class: "n " + cls }, days === undefined ? "–" : Math.floor(days)));
  }));
}

function drawHeader(st) {
  const g = st.generation || {};
  $("#generation").textContent = `generation ${g.number ?? "?"} of ${g.file || "?"}` +
    (g.loaded ? `, loaded ${ago(g.loaded)}` : "");
  const last = (st.reloads || {}).last;
  const r = $("#reload");
  if (last) {
    r.textContent = `last reload ${last.ok ? "ok" : "FAILED"} ${ago(last.at)}`;
    r.className = last.ok ? "muted" : "bad";
    $("#reload-lines").textContent = (last.lines || []).join("\n");
  } else {
    r.textContent = "no reload since start";
    r.className = "muted";
  }
  $("#updated").textContent = "updated " + new Date().toLocaleTimeString();
}

function askToken() {
  $("#login").hidden = false;
  banner("this endpoint needs a token");
  $("#token").focus();
}

async function poll() {
  if (inFlight) return;
  inFlight = true;
  try {
    const r = await fetch("status.json", { headers: headers(), cache: "no-store" });
    if (r.status === 401) { askToken(); return; }
    if (!r.ok) { banner(`status.json: ${r.status} ${r.statusText}`); return; }
    const st = await r.json();
    const now = Date.now();
    drawHeader(st);
    drawListeners(st, now);
    drawUpstreams(st, now);
    drawCertificates(st);
    if ($("#banner").textContent.startsWith("status.json") ||
        $("#banner").textContent.startsWith("cannot reach")) banner("");
    document.body.dataset.polls = String(Number(document.body.dataset.polls || 0) + 1);
  } catch (e) {
    banner("cannot reach tlsgw: " + e);
  } finally {
    inFlight = false;
  }
}

$("#login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("#token").value.trim());
  $("#login").hidden = true;
  banner("");
  poll();
});

poll();
setInterval(poll, POLL_MS);
