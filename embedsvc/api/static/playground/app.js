// The embedsvc search playground: plain JavaScript over the public HTTP API.
//
// Every piece of text from the server (titles, documents, metadata, error messages) reaches
// the page as a text node (textContent, append of a string), never as HTML: documents are
// data and may hold markup. The API key lives in sessionStorage only, so it is gone when
// the tab closes and never sent anywhere but this server.
"use strict";

const KEY_STORAGE = "embedsvc.apiKey";
const JOB_POLL_MS = 2000;

const $ = (id) => document.getElementById(id);
const numbers = new Intl.NumberFormat();

// An element with attributes and children; string children become text nodes.
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined) continue;
    if (name === "class") node.className = value;
    else node.setAttribute(name, String(value));
  }
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

// --- the API --------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

// Call the API; the answer's JSON, or an ApiError carrying the server's code and message.
async function api(method, path, body) {
  const headers = {};
  if (apiKey()) headers.Authorization = `Bearer ${apiKey()}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method, headers, cache: "no-store",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    throw new ApiError(0, "unreachable", `cannot reach the server (${err.message})`);
  }
  const payload = await response.json().catch(() => null);
  if (!response.ok) {
    const error = payload && payload.error;
    throw new ApiError(response.status, error ? error.code : "http_error",
                       error ? error.message : `HTTP ${response.status} ${response.statusText}`);
  }
  return payload;
}

// Paths are relative to the page, so the playground works behind a proxy that serves the
// API under a prefix.
const collectionPath = (name) => `v1/collections/${encodeURIComponent(name)}`;

function describeError(err) {
  return err instanceof ApiError && err.status ? `${err.status} ${err.code}: ${err.message}` : err.message;
}

function showError(err) {
  const box = $("error");
  box.textContent = typeof err === "string" ? err : describeError(err);
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

// --- the API key ------------------------------------------------------------------------

function showKeyState() {
  $("key-state").textContent = apiKey() ? "key set for this tab" : "no key";
}

function saveKey(event) {
  event.preventDefault();
  const key = $("api-key").value.trim();
  // a header value must be printable ASCII; say so rather than let fetch fail obscurely
  if (/[^\x21-\x7e]/.test(key)) {
    showError("an API key is printable ASCII without spaces (esk_…)");
    return;
  }
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
  showKeyState();
  reload();
}

function forgetKey() {
  sessionStorage.removeItem(KEY_STORAGE);
  $("api-key").value = "";
  showKeyState();
  reload();
}

// --- search -----------------------------------------------------------------------------

let searchSeq = 0;  // answers to an older search are dropped: the newest wins

async function loadCollectionNames() {
  const select = $("collection");
  const chosen = select.value;
  const { collections } = await api("GET", "v1/collections");
  select.replaceChildren(...collections.map((name) => el("option", { value: name }, name)));
  if (collections.includes(chosen)) select.value = chosen;
  $("search-button").disabled = collections.length === 0;
  $("search-status").textContent = collections.length ? "" : "No collections yet: create one with the API or the CLI.";
}

function searchBody() {
  const body = {
    query: $("query").value,
    k: Number($("k").value),
    mode: document.querySelector("input[name=mode]:checked").value,
    include_text: true,
    include_metadata: true,
  };
  const filter = $("filter").value.trim();
  if (filter) {
    try {
      body.filter = JSON.parse(filter);
    } catch (err) {
      throw new Error(`filter: not valid JSON (${err.message})`);
    }
  }
  return body;
}

async function search(event) {
  if (event) event.preventDefault();
  const name = $("collection").value;
  if (!name || !$("query").value.trim()) return;
  const seq = ++searchSeq;
  let body;
  try {
    body = searchBody();
  } catch (err) {
    clearResults();
    showError(err.message);
    return;
  }
  $("search-status").textContent = "Searching…";
  const started = performance.now();
  try {
    const result = await api("POST", `${collectionPath(name)}/search`, body);
    const browserMs = performance.now() - started;
    if (seq !== searchSeq) return;
    clearError();
    renderResult(result, browserMs);
  } catch (err) {
    if (seq !== searchSeq) return;
    clearResults();  // results of another query under an error would mislead
    showError(err);
  }
}

function clearResults() {
  $("summary").hidden = true;
  $("hits").replaceChildren();
  $("search-status").textContent = "";
}

function renderResult(result, browserMs) {
  $("result-mode").textContent = result.mode;
  $("result-fallback").textContent = result.fallback || "none";
  $("result-version").textContent = result.index_version ?? "none";
  $("result-count").textContent = String(result.hits.length);
  $("server-ms").textContent = `${result.took_ms.toFixed(1)} ms`;
  $("browser-ms").textContent = `${browserMs.toFixed(1)} ms`;
  $("summary").hidden = false;
  $("search-status").textContent = result.hits.length ? "" : "No documents matched.";
  const items = result.hits.map((hit, rank) => renderHit(hit, rank + 1));
  $("hits").replaceChildren(...items.map(([item]) => item));
  // scroll each text box to its passage, now that the boxes are laid out
  for (const [, box] of items) {
    const mark = box.querySelector("mark");
    if (mark) box.scrollTop = Math.max(0, mark.offsetTop - 8);
  }
}

// Where the passage lies in the title and in the text, in code points. The server's offsets
// count code points of `${title} ${text}` stripped (what it embeds); JavaScript strings count
// UTF-16 units, hence arrays of code points.
function passageSpans(hit, title, text) {
  const passage = hit.passage;
  if (!passage || hit.text === null || hit.text === undefined) return null;
  const joined = [...title, " ", ...text];
  let lead = 0;
  while (lead < joined.length && /\s/.test(joined[lead])) lead += 1;
  let start = passage.start + lead;
  let end = passage.end + lead;
  if (joined.slice(start, end).join("") !== passage.text) {
    // offsets that do not fit this text (it changed meanwhile): look for the passage instead
    const at = joined.join("").indexOf(passage.text);
    if (at < 0 || !passage.text) return null;
    start = [...joined.join("").slice(0, at)].length;
    end = start + [...passage.text].length;
  }
  const body = title.length + 1;
  return {
    title: [Math.min(start, title.length), Math.min(end, title.length)],
    text: [Math.max(start - body, 0), Math.max(end - body, 0)],
  };
}

// The characters with [from, to) inside a <mark>, all as text nodes.
function marked(chars, [from, to] = [0, 0]) {
  if (to <= from) return [chars.join("")];
  return [chars.slice(0, from).join(""), el("mark", {}, chars.slice(from, to).join("")),
          chars.slice(to).join("")];
}

function renderHit(hit, rank) {
  const title = [...hit.title];
  const text = [...(hit.text ?? "")];
  const spans = passageSpans(hit, title, text);
  const box = el("div", { class: "doc-text" }, ...marked(text, spans?.text));
  const expand = el("button", { type: "button", class: "link" }, "show all");
  expand.addEventListener("click", () => {
    const open = box.classList.toggle("expanded");
    expand.textContent = open ? "show less" : "show all";
  });
  const where = hit.passage
    ? `passage ${hit.passage.ord} · characters ${hit.passage.start}–${hit.passage.end}`
    : "no passage (a lexical match)";
  const metadata = hit.metadata && Object.keys(hit.metadata).length
    ? el("div", { class: "metadata" }, el("span", { class: "label" }, "metadata "), JSON.stringify(hit.metadata))
    : null;
  const item = el("li", { class: "hit", "data-id": hit.id },
    el("div", { class: "hit-head" },
      el("span", { class: "rank" }, String(rank)),
      el("h3", { class: "title" }, ...(title.length ? marked(title, spans?.title) : ["(no title)"])),
      el("span", { class: "score", title: "score" }, hit.score.toFixed(4))),
    el("div", { class: "hit-meta" },
      el("span", { class: "doc-id" }, `id ${hit.id}`), el("span", {}, where), expand),
    box, metadata);
  return [item, box];
}

// --- collections and jobs ---------------------------------------------------------------

let jobTimer = null;

function formatValue(value) {
  if (value === null || value === undefined) return "—";
  if (typeof value === "boolean") return value ? "yes" : "no";
  if (typeof value === "number") return Number.isInteger(value) ? numbers.format(value) : value.toFixed(3);
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

function formatBytes(bytes) {
  if (bytes === null || bytes === undefined) return "—";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${unit ? value.toFixed(1) : value} ${units[unit]}`;
}

function formatTime(seconds) {
  return seconds ? new Date(seconds * 1000).toLocaleString() : "—";
}

// "5 min ago": short enough for a card; the full time is the element's title
function formatAgo(seconds) {
  if (!seconds) return "—";
  const age = Math.max(0, Date.now() / 1000 - seconds);
  if (age < 60) return "just now";
  if (age < 3600) return `${Math.floor(age / 60)} min ago`;
  if (age < 86400) return `${Math.floor(age / 3600)} h ago`;
  return new Date(seconds * 1000).toLocaleDateString();
}

function stat(field, label, value, title = value) {
  return el("div", { class: "stat", "data-field": field }, el("dt", {}, label), el("dd", { title }, value));
}

// The drift block, drawn from whatever fields the server sends, when it sends one.
function renderDrift(drift) {
  if (!drift || typeof drift !== "object") return null;
  const head = el("h4", {}, "Query drift");
  if (typeof drift.drifting === "boolean") {
    head.append(el("span", { class: drift.drifting ? "badge warn" : "badge ok" },
                   drift.drifting ? "drifting" : "stable"));
  }
  const rows = Object.entries(drift)
    .filter(([name]) => name !== "drifting")
    .map(([name, value]) => stat(name, name.replaceAll("_", " "), formatValue(value)));
  return el("section", { class: "drift", "data-field": "drift" }, head, el("dl", { class: "stats" }, ...rows));
}

function renderCollection(info) {
  if (info.error) {
    return el("article", { class: "card", "data-collection": info.name },
      el("h3", {}, info.name), el("p", { class: "error-inline" }, describeError(info.error)));
  }
  const index = info.index || {};
  const recall = index.recall_at_10 ?? null;
  const dim = info.dimension ?? index.dim;
  const state = info.model_state
    ? el("span", { class: `badge ${info.model_state === "ready" ? "ok" : ""}`, title: "model" }, info.model_state)
    : null;
  return el("article", { class: "card", "data-collection": info.name },
    el("header", { class: "card-head" }, el("h3", {}, info.name), state),
    el("p", { class: "muted model" }, [info.model ?? "no model", dim ? `${dim} dimensions` : null]
      .filter(Boolean).join(" · ")),
    el("dl", { class: "stats" },
      stat("documents", "documents", formatValue(info.documents)),
      stat("indexed_vectors", "indexed vectors", formatValue(info.indexed_vectors)),
      stat("fresh_vectors", "fresh vectors", formatValue(info.fresh_vectors)),
      stat("deleted_vectors", "deleted vectors", formatValue(info.deleted_vectors)),
      stat("pending", "pending", formatValue(info.pending)),
      stat("index_version", "index version", formatValue(info.index_version)),
      stat("layout", "layout", info.layout ?? "—"),
      stat("recall", "recall@10", recall === null ? "not measured" : recall.toFixed(3)),
      stat("index_bytes", "index size", formatBytes(index.index_bytes)),
      stat("last_compaction", "compacted", formatAgo(info.last_compaction), formatTime(info.last_compaction))),
    renderDrift(info.drift));
}

async function loadCollections() {
  const status = $("collections-status");
  try {
    const { collections } = await api("GET", "v1/collections");
    const infos = await Promise.all(collections.map(
      (name) => api("GET", collectionPath(name)).catch((error) => ({ name, error }))));
    $("collections").replaceChildren(...infos.map(renderCollection));
    status.textContent = collections.length ? "" : "No collections yet.";
    clearError();
  } catch (err) {
    $("collections").replaceChildren();
    status.textContent = "";
    showError(err);
  }
}

function renderJob(job) {
  const percent = Math.round((job.progress || 0) * 100);
  return el("tr", { "data-job": job.id },
    el("td", { class: "mono", title: job.id }, job.id.slice(0, 12)),
    el("td", {}, job.collection),
    el("td", {}, job.kind),
    el("td", {}, el("span", { class: `badge state-${job.state}` }, job.state)),
    el("td", {}, job.phase ?? "—"),
    el("td", { class: "progress" }, el("progress", { max: "1", value: String(job.progress || 0) }), ` ${percent}%`),
    el("td", {}, formatTime(job.created_at)),
    el("td", { class: "job-error" }, job.error ?? ""));
}

async function loadJobs() {
  clearTimeout(jobTimer);
  const status = $("jobs-status");
  const table = $("jobs");
  try {
    const { jobs } = await api("GET", "v1/jobs");
    table.tBodies[0].replaceChildren(...jobs.map(renderJob));
    table.hidden = jobs.length === 0;
    status.textContent = jobs.length ? "" : "No jobs yet.";
    // follow jobs that are still moving while this view is open
    if (jobs.some((job) => job.state === "queued" || job.state === "running") && currentView() === "collections") {
      jobTimer = setTimeout(loadJobs, JOB_POLL_MS);
    }
  } catch (err) {
    table.hidden = true;
    status.textContent = `Jobs: ${describeError(err)}`;  // a read key may not list jobs (admin)
  }
}

// --- views ------------------------------------------------------------------------------

function currentView() {
  return location.hash === "#collections" ? "collections" : "search";
}

function route() {
  const view = currentView();
  for (const name of ["search", "collections"]) {
    $(`view-${name}`).hidden = name !== view;
    $(`tab-${name}`).classList.toggle("active", name === view);
    if (name === view) $(`tab-${name}`).setAttribute("aria-current", "page");
    else $(`tab-${name}`).removeAttribute("aria-current");
  }
  if (view === "collections") {
    loadCollections();
    loadJobs();
  }
}

function reload() {
  clearError();
  loadCollectionNames().catch(showError);
  route();
}

document.addEventListener("DOMContentLoaded", () => {
  $("api-key").value = apiKey();
  showKeyState();
  $("key-form").addEventListener("submit", saveKey);
  $("key-clear").addEventListener("click", forgetKey);
  $("search-form").addEventListener("submit", search);
  // a new mode answers at once for the query on screen
  for (const radio of document.querySelectorAll("input[name=mode]")) radio.addEventListener("change", () => search());
  $("collection").addEventListener("change", () => search());
  $("refresh").addEventListener("click", route);
  window.addEventListener("hashchange", route);
  reload();
});
