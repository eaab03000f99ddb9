// The live dashboard: reads the API with the key kept in sessionStorage, and follows the
// change feed with long polls. Every value is written with textContent, never as HTML.
"use strict";

const STORE_KEY = "provider-registry-key";
const STATUSES = ["idle", "busy", "maintenance", "error", "offline"];
const FEED_MAX = 100;
const $ = (selector) => document.querySelector(selector);
let pollGeneration = 0;
let refreshTimer = null;
let pickedId = null;

function key() { return sessionStorage.getItem(STORE_KEY) || ""; }

async function api(path) {
  const headers = key() ? { Authorization: `Bearer ${key()}` } : {};
  const response = await fetch(path, { headers, cache: "no-store" });
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const message = body && body.error ? `${body.error} (${body.code})` : `HTTP ${response.status}`;
    throw Object.assign(new Error(message), { status: response.status });
  }
  return { body, headers: response.headers };
}

function showError(error) {
  const box = $("#error");
  box.hidden = !error;
  box.textContent = error ? String(error.message || error) : "";
}

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function row(cells, numeric = []) {
  const tr = el("tr");
  cells.forEach((cell, i) => {
    const td = cell instanceof Node ? el("td") : el("td", cell, numeric.includes(i) ? "num" : "");
    if (cell instanceof Node) td.append(cell);
    tr.append(td);
  });
  return tr;
}

const mb = (n) => (n >= 1024 ? `${(n / 1024).toFixed(0)} GB` : `${n} MB`);
const badge = (status) => el("span", status, `badge ${status}`);

async function loadSummary() {
  const { body } = await api("/providers/summary");
  const cards = $("#by-status");
  cards.replaceChildren(...STATUSES.map((status) => {
    const card = el("div", null, `card ${status}`);
    card.dataset.status = status;
    card.append(el("b", body.by_status[status] || 0), el("span", status));
    return card;
  }));
  $("#in-grace").textContent = body.in_grace;
  $("#by-model tbody").replaceChildren(...Object.entries(body.by_gpu_model).map(([model, c]) =>
    row([model, c.providers, c.gpus, c.idle_gpus, mb(c.vram_mb), mb(c.idle_vram_mb)], [1, 2, 3, 4, 5])));
  $("#by-location tbody").replaceChildren(...Object.entries(body.by_location).map(([location, c]) =>
    row([location, c.providers, c.idle_providers, c.gpus, c.idle_gpus], [1, 2, 3, 4])));
}

function gpusOf(provider) {
  const counts = {};
  for (const gpu of provider.gpus || []) counts[gpu.model_name] = (counts[gpu.model_name] || 0) + 1;
  return Object.entries(counts).map(([model, n]) => `${n}× ${model}`).join(", ");
}

async function loadProviders() {
  const params = new URLSearchParams({ limit: "200" });
  for (const [name, value] of new FormData($("#filters"))) if (value) params.append(name, value);
  const { body, headers } = await api(`/providers?${params}`);
  $("#total").textContent = `${headers.get("X-Total-Count") || body.length} matching`;
  $("#providers tbody").replaceChildren(...body.map((p) => {
    const tr = row([p.name, badge(p.status), p.location || "", gpusOf(p), (p.last_seen_at || "").replace("T", " ").slice(0, 19), el("code", p.id)]);
    tr.dataset.id = p.id;
    tr.dataset.status = p.status;
    if (p.id === pickedId) tr.classList.add("picked");
    tr.addEventListener("click", () => showProvider(p.id));
    return tr;
  }));
}

async function showProvider(id) {
  pickedId = id;
  for (const tr of document.querySelectorAll("#providers tbody tr")) tr.classList.toggle("picked", tr.dataset.id === id);
  let provider;
  try {
    provider = (await api(`/providers/${id}`)).body;
  } catch (error) {
    $("#detail").textContent = error.message;
    return;
  }
  const list = el("dl");
  const fields = ["name", "id", "status", "owner_id", "hostname", "ip_address", "location", "liveness", "registered_at", "last_seen_at",
    "lease_expires_at", "version", "claimant"];
  for (const name of fields) {
    if (provider[name] === undefined || provider[name] === null) continue;
    const value = el("dd");
    if (name === "status") value.append(badge(provider.status));
    else value.textContent = String(provider[name]);
    list.append(el("dt", name), value);
  }
  for (const gpu of provider.gpus || []) {
    const health = gpu.is_healthy === false ? " (unhealthy)" : "";
    list.append(el("dt", "GPU"), el("dd", `${gpu.model_name}, ${mb(gpu.vram_mb)}${gpu.architecture ? ", " + gpu.architecture : ""}${health}`));
  }
  if (provider.metadata && Object.keys(provider.metadata).length) {
    list.append(el("dt", "metadata"), el("dd", JSON.stringify(provider.metadata)));
  }
  $("#detail").replaceChildren(list);
  $("#detail").classList.remove("muted");
}

function addEvents(events) {
  const feed = $("#feed");
  for (const event of events) {
    const extra = Object.entries(event)
      .filter(([name]) => !["id", "type", "provider_id", "at"].includes(name))
      .map(([name, value]) => `${name}=${Array.isArray(value) ? value.join(",") : value}`).join(" ");
    const item = el("li", null, "fresh");
    item.dataset.type = event.type;
    item.append(el("span", `${(event.at || "").replace("T", " ").slice(0, 19)} `, "muted"), el("b", event.type), ` ${event.provider_id || ""} ${extra}`);
    feed.prepend(item);
  }
  while (feed.children.length > FEED_MAX) feed.lastChild.remove();
}

function refreshSoon() {
  // Many events at once make one refresh, not one each.
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => refresh().catch(showError), 250);
}

async function follow(generation) {
  let after;
  try {
    // The last events the feed holds, then whatever comes next.
    const recent = await api("/providers/events?after=0");
    addEvents(recent.body.events.slice(-30));
    after = recent.body.next;
  } catch (error) {
    showError(error);
    return;
  }
  while (generation === pollGeneration) {
    try {
      const { body } = await api(`/providers/events?after=${encodeURIComponent(after)}&wait=25`);
      if (generation !== pollGeneration) return;
      $("#live").textContent = "live";
      $("#live").className = "on";
      if (body.events.length) {
        addEvents(body.events);
        refreshSoon();
      }
      after = body.next;
    } catch (error) {
      $("#live").textContent = "reconnecting…";
      $("#live").className = "muted";
      if (error.status === 401 || error.status === 403) { showError(error); return; }
      await new Promise((resolve) => setTimeout(resolve, 2000));
    }
  }
}

async function refresh() {
  await Promise.all([loadSummary(), loadProviders()]);
  if (pickedId) await showProvider(pickedId);
}

async function start() {
  pollGeneration += 1;
  showError(null);
  if (!key()) {
    showError("Enter a service key with the read role: it is kept in this tab only (sessionStorage).");
    return;
  }
  try {
    await refresh();
  } catch (error) {
    showError(error);
    return;
  }
  follow(pollGeneration);
}

$("#key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const value = $("#key").value.trim();
  if (value) sessionStorage.setItem(STORE_KEY, value);
  $("#key").value = "";
  start();
});
$("#forget").addEventListener("click", () => {
  sessionStorage.removeItem(STORE_KEY);
  pollGeneration += 1;
  $("#live").textContent = "not connected";
  start();
});
$("#filters").addEventListener("submit", (event) => {
  event.preventDefault();
  loadProviders().catch(showError);
});
start();
