// Palisade provisioner UI. Plain JS, no build step. Every value from the
// API is written with textContent, never parsed as HTML.
"use strict";

const KEY = "palisade-provisioner-token";
let role = "";
let selected = "";
let timer = 0;

const $ = (id) => document.getElementById(id);

function token() { return sessionStorage.getItem(KEY) || ""; }

async function api(method, path, body) {
  const opts = { method, headers: { Authorization: "Bearer " + token() } };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch("/api/v1/" + path, opts);
  if (r.status === 401) { signOut("The token was not accepted."); throw new Error("unauthorized"); }
  if (r.status === 204) return null;
  const data = await r.json().catch(() => ({ error: r.statusText }));
  if (!r.ok) throw new Error(data.error + (data.field ? " (" + data.field + ")" : ""));
  return data;
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function when(t) {
  if (!t || t.startsWith("0001-")) return "";
  return new Date(t).toLocaleString();
}

function signOut(msg) {
  sessionStorage.removeItem(KEY);
  clearInterval(timer);
  $("app").hidden = true;
  $("logout").hidden = true;
  $("role").textContent = "";
  $("login").hidden = false;
  $("login-error").textContent = msg || "";
}

async function signIn(tok) {
  sessionStorage.setItem(KEY, tok);
  try {
    role = (await api("GET", "whoami")).role;
  } catch (e) {
    if (e.message !== "unauthorized") signOut(e.message);
    return;
  }
  $("login").hidden = true;
  $("app").hidden = false;
  $("logout").hidden = false;
  $("role").textContent = "signed in: " + role;
  await refresh();
  clearInterval(timer);
  timer = setInterval(refresh, 2000);
}

async function refresh() {
  try {
    const ms = await api("GET", "machines");
    render(ms);
    renderProfiles(await api("GET", "profiles"));
    if (selected) await showTimeline(selected);
    $("error").textContent = "";
  } catch (e) {
    $("error").textContent = e.message;
  }
}

function render(ms) {
  const body = $("machines").querySelector("tbody");
  body.replaceChildren();
  $("count").textContent = "(" + ms.length + ")";
  $("empty").hidden = ms.length > 0;
  for (const m of ms) {
    const tr = document.createElement("tr");
    tr.dataset.mac = m.mac;
    if (m.mac === selected) tr.className = "selected";
    tr.append(el("td", m.mac), el("td", m.uuid || ""), el("td", m.arch_name));
    const st = el("td");
    st.append(el("span", m.state, "state state-" + m.state));
    tr.append(st, el("td", m.profile || ""), el("td", m.ip || ""), el("td", when(m.last_seen)));
    const act = el("td");
    if (m.state === "discovered" && role === "admin") {
      const b = el("button", "Accept", "accept");
      b.addEventListener("click", () => accept(m.mac, b));
      act.append(b);
    }
    const tl = el("button", "Timeline", "show-timeline");
    tl.addEventListener("click", () => { selected = m.mac; refresh(); });
    act.append(" ", tl);
    tr.append(act);
    body.append(tr);
  }
}

function renderProfiles(ps) {
  const body = $("profiles").querySelector("tbody");
  body.replaceChildren();
  for (const p of ps || []) {
    const tr = document.createElement("tr");
    tr.dataset.profile = p.name;
    tr.append(el("td", p.name), el("td", p.image), el("td", p.platform), el("td", p.role),
      el("td", (p.keyd_hints || []).join(", "), "keyd"), el("td", p.cluster || "", "cluster"));
    body.append(tr);
  }
}

async function accept(mac, button) {
  button.disabled = true;
  try {
    await api("POST", "machines/" + encodeURIComponent(mac) + "/accept");
    await refresh();
  } catch (e) {
    $("error").textContent = "accept " + mac + ": " + e.message;
    button.disabled = false;
  }
}

async function showTimeline(mac) {
  const ev = await api("GET", "machines/" + encodeURIComponent(mac) + "/events");
  $("timeline").hidden = false;
  $("timeline-mac").textContent = mac;
  const ol = $("events");
  ol.replaceChildren();
  for (const e of ev) {
    const li = el("li");
    li.append(el("time", when(e.time)), el("span", e.kind, "kind"));
    const parts = [];
    if (e.detail) parts.push(e.detail);
    if (e.file) parts.push(e.file);
    if (e.bytes) parts.push(e.bytes + " bytes");
    if (e.took_ns) parts.push((e.took_ns / 1e6).toFixed(0) + " ms");
    if (e.remote) parts.push("from " + e.remote);
    if (e.state) parts.push("→ " + e.state);
    li.append(el("span", parts.join(" · ")));
    if (e.error) li.append(" ", el("span", e.error, "err"));
    ol.append(li);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const tok = $("token").value.trim();
    $("token").value = "";
    signIn(tok);
  });
  $("logout").addEventListener("click", () => signOut(""));
  if (token()) signIn(token()); else signOut("");
});
