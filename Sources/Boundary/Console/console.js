// The stega console: live events, an operation's timeline, the correlation matrix as a
// heatmap, and a symbol's prices and returns. Plain JavaScript, no dependencies, no build
// step. It talks to the boundary only: `/ws` for events, `/operations/{id}`, and the apis'
// reads through `/api/returns/…` and `/api/correlations/…`.
//
// The state is in the URL fragment (DESIGN.md): #events?pattern=…, #op=<id>,
// #correlations?symbols=A,B,C&window=N, #symbol=AAPL. What a test reads: event rows carry
// data-routing-key and data-event-id, heatmap cells data-a, data-b and data-value, the
// operation view data-operation-status.
"use strict";

const $ = (id) => document.getElementById(id);

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value === undefined || value === null) continue;
    if (key === "className") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attributes = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  for (const child of children) node.append(child);
  return node;
}

function showError(id, message) {
  const node = $(id);
  node.textContent = message || "";
  node.hidden = !message;
}

/** GET a JSON document; rejects with the service's error message. */
async function getJSON(path) {
  let response;
  try {
    response = await fetch(path, { headers: { Accept: "application/json" } });
  } catch (error) {
    throw new Error(`cannot reach the boundary (${path})`);
  }
  let body = null;
  try { body = await response.json(); } catch (error) { /* not JSON: reported below */ }
  if (!response.ok) {
    const message = body && body.error ? `${body.error.code}: ${body.error.message}` : `${response.status} from ${path}`;
    const failure = new Error(message);
    failure.status = response.status;
    throw failure;
  }
  return body;
}

/** Topic matching as the broker does it: `*` one word, `#` zero or more. */
function topicMatches(pattern, key) {
  const p = pattern.split("."), k = key.split(".");
  const memo = new Map();
  const match = (i, j) => {
    const id = i * (k.length + 1) + j;
    if (memo.has(id)) return memo.get(id);
    let result;
    if (i === p.length) result = j === k.length;
    else if (p[i] === "#") result = match(i + 1, j) || (j < k.length && match(i, j + 1));
    else result = j < k.length && (p[i] === "*" || p[i] === k[j]) && match(i + 1, j + 1);
    memo.set(id, result);
    return result;
  };
  return match(0, 0);
}

// ---------------------------------------------------------------------------------------
// The one WebSocket to the boundary: subscriptions are kept here and sent again after a
// reconnect; every message goes to the listeners (each view filters what is its own).

const Live = {
  socket: null,
  patterns: new Set(),
  operations: new Set(),
  listeners: new Set(),
  retry: 250,

  connect() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const socket = new WebSocket(`${scheme}//${location.host}/ws`);
    this.socket = socket;
    socket.addEventListener("open", () => {
      this.retry = 250;
      setLink("live", "live");
      for (const pattern of this.patterns) this.send({ action: "subscribe", pattern });
      for (const operation of this.operations) this.send({ action: "subscribe", operation });
    });
    socket.addEventListener("message", (message) => {
      let data;
      try { data = JSON.parse(message.data); } catch (error) { return; }
      for (const listener of this.listeners) listener(data);
    });
    socket.addEventListener("close", () => {
      setLink("down", "reconnecting…");
      setTimeout(() => this.connect(), this.retry);
      this.retry = Math.min(this.retry * 2, 5000);
    });
  },

  send(message) {
    if (this.socket && this.socket.readyState === WebSocket.OPEN) this.socket.send(JSON.stringify(message));
  },

  follow(kind, value) {
    const set = kind === "pattern" ? this.patterns : this.operations;
    if (set.has(value)) return;
    set.add(value);
    this.send({ action: "subscribe", [kind]: value });
  },

  unfollow(kind, value) {
    const set = kind === "pattern" ? this.patterns : this.operations;
    if (!set.delete(value)) return;
    this.send({ action: "unsubscribe", [kind]: value });
  },
};

function setLink(state, text) {
  const node = $("link-status");
  node.dataset.link = state;
  node.textContent = text;
}

// ---------------------------------------------------------------------------------------
// Routing: the fragment names the view and its state.

function parseHash() {
  const hash = decodeURIComponent(location.hash.slice(1));
  if (hash.startsWith("op=")) return { view: "op", id: hash.slice(3) };
  if (hash.startsWith("symbol=")) return { view: "symbol", symbol: hash.slice(7) };
  const [view, query = ""] = hash.split("?", 2);
  const params = {};
  for (const part of query.split("&")) {
    if (!part) continue;
    const at = part.indexOf("=");
    params[at < 0 ? part : part.slice(0, at)] = at < 0 ? "" : part.slice(at + 1);
  }
  if (view === "correlations") return { view, symbols: params.symbols || "", window: params.window || "" };
  return { view: "events", pattern: params.pattern || "" };
}

function go(fragment) {
  if (location.hash === fragment) route();
  else location.hash = fragment;
}

const views = {};
let current = null;

function route() {
  const state = parseHash();
  if (current && current !== views[state.view]) current.leave();
  for (const section of document.querySelectorAll("[data-view]")) section.hidden = section.dataset.view !== state.view;
  for (const link of document.querySelectorAll("[data-view-link]")) {
    if (link.dataset.viewLink === state.view) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  current = views[state.view];
  current.enter(state);
}

// ---------------------------------------------------------------------------------------
// Symbols for the type-ahead (GET /symbols), fetched once and on demand.

let symbolList = null;
async function symbols(refresh = false) {
  if (!symbolList || refresh) {
    try { symbolList = (await getJSON("/api/returns/symbols")).symbols || []; } catch (error) { symbolList = symbolList || []; }
  }
  return symbolList;
}

/** A type-ahead on `input`: completes the last comma-separated word (or the whole value). */
function typeahead(input, list, { multiple }) {
  let items = [], active = -1;
  const close = () => { list.hidden = true; input.setAttribute("aria-expanded", "false"); active = -1; };
  const words = () => input.value.split(",");
  const render = () => {
    list.replaceChildren(...items.map((item, i) => {
      const option = el("li", { role: "option", id: `${list.id}-${i}`, "aria-selected": String(i === active), text: item });
      option.addEventListener("mousedown", (event) => { event.preventDefault(); pick(item); });
      return option;
    }));
    list.hidden = items.length === 0;
    input.setAttribute("aria-expanded", String(!list.hidden));
    if (active >= 0) input.setAttribute("aria-activedescendant", `${list.id}-${active}`);
    else input.removeAttribute("aria-activedescendant");
  };
  const pick = (item) => {
    if (multiple) {
      const parts = words();
      parts[parts.length - 1] = item;
      input.value = parts.map((w) => w.trim()).filter(Boolean).join(",") + ",";
    } else {
      input.value = item;
    }
    close();
    input.focus();
  };
  input.addEventListener("input", async () => {
    const all = await symbols();
    const typed = (multiple ? words().pop() : input.value).trim().toUpperCase();
    const chosen = new Set(multiple ? words().slice(0, -1).map((w) => w.trim()) : []);
    items = typed ? all.filter((s) => s.startsWith(typed) && !chosen.has(s)).slice(0, 12) : [];
    active = -1;
    render();
  });
  input.addEventListener("keydown", (event) => {
    if (list.hidden) return;
    if (event.key === "ArrowDown" || event.key === "ArrowUp") {
      event.preventDefault();
      active = (active + (event.key === "ArrowDown" ? 1 : items.length - 1)) % items.length;
      render();
    } else if ((event.key === "Enter" || event.key === "Tab") && active >= 0) {
      event.preventDefault();
      pick(items[active]);
    } else if (event.key === "Escape") {
      close();
    }
  });
  input.addEventListener("blur", () => setTimeout(close, 100));
}

// ---------------------------------------------------------------------------------------
// Events: the live stream, filtered by a routing-key pattern.

views.events = (() => {
  let pattern = null, paused = false, kept = 0;
  const rows = $("events-rows");

  const listener = (message) => {
    if (paused || message.type !== "event" || !pattern || !topicMatches(pattern, message.routing_key)) return;
    add(message);
  };

  function add(event) {
    const operation = event.correlation_id
      ? el("a", { href: `#op=${event.correlation_id}`, className: "mono", text: event.correlation_id.slice(0, 8) + "…",
                  title: event.correlation_id })
      : el("span", { className: "muted", text: "–" });
    const details = el("details", {}, el("summary", { text: summarize(event.payload) }),
                       el("pre", { text: JSON.stringify(event, null, 2) }));
    const row = el("tr", { "data-routing-key": event.routing_key, "data-event-id": event.event_id, className: "new" },
                   el("td", { className: "mono", text: (event.timestamp || "").replace("T", " ").replace("Z", "") }),
                   el("td", { className: "mono", text: event.routing_key }),
                   el("td", {}, operation),
                   el("td", {}, details));
    rows.prepend(row);
    kept += 1;
    const cap = Math.max(10, Number($("events-cap").value) || 500);
    while (kept > cap) { rows.lastElementChild.remove(); kept -= 1; }
    $("events-count").textContent = `${kept} row${kept === 1 ? "" : "s"}`;
  }

  function summarize(payload) {
    if (!payload || typeof payload !== "object") return String(payload);
    const parts = [];
    for (const key of ["symbol", "symbols", "window", "count", "pairs", "as_of", "operation_id", "reason"]) {
      if (payload[key] !== undefined) parts.push(`${key} ${Array.isArray(payload[key]) ? payload[key].join(",") : payload[key]}`);
    }
    return parts.join(" · ") || "payload";
  }

  function setPaused(value) {
    paused = value;
    const button = $("events-pause");
    button.setAttribute("aria-pressed", String(paused));
    button.textContent = paused ? "Resume" : "Pause";
  }

  $("events-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const next = $("events-pattern").value.trim() || "#";
    go(`#events?pattern=${encodeURIComponent(next)}`);
  });
  $("events-pause").addEventListener("click", () => setPaused(!paused));
  $("events-clear").addEventListener("click", () => {
    rows.replaceChildren();
    kept = 0;
    $("events-count").textContent = "";
  });

  return {
    enter(state) {
      const next = state.pattern || "#";
      const valid = next.length <= 255 && next.split(".").every((w) => w.length > 0);
      showError("events-error", valid ? "" : `not a routing-key pattern: ${next}`);
      if (!valid) return;
      $("events-pattern").value = next;
      if (pattern && pattern !== next) Live.unfollow("pattern", pattern);
      pattern = next;
      Live.listeners.add(listener);
      Live.follow("pattern", pattern);
    },
    leave() {
      Live.listeners.delete(listener);
      if (pattern) Live.unfollow("pattern", pattern);
      pattern = null;
    },
  };
})();

// ---------------------------------------------------------------------------------------
// Operation: its status and a timeline of its events, live until it resolves.

views.op = (() => {
  let id = null, events = [], seen = new Set();
  const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

  const listener = (message) => {
    if (!id) return;
    if (message.type === "event" && (message.correlation_id || "").toLowerCase() === id) addEvent(message);
    if (message.type === "operation" && message.operation_id === id) setStatus(message.status);
  };

  function setStatus(status, note = "") {
    const node = $("op-status");
    node.dataset.operationStatus = status;
    node.textContent = status.replace("_", " ");
    $("op-note").textContent = note;
    if (status !== "pending" && status !== "unknown" && events.length > 1) {
      const total = seconds(events[events.length - 1].timestamp) - seconds(events[0].timestamp);
      $("op-note").textContent = `${events.length} events over ${total} s`;
    }
  }

  const seconds = (timestamp) => Math.round(Date.parse(timestamp) / 1000);

  function addEvent(event) {
    if (seen.has(event.event_id)) return;
    seen.add(event.event_id);
    events.push(event);
    const previous = events.length > 1 ? events[events.length - 2] : null;
    const delta = previous ? `+${seconds(event.timestamp) - seconds(previous.timestamp)} s` : "first";
    const failure = /\.operation_failed$/.test(event.routing_key);
    $("op-timeline").append(el("li", { className: failure ? "failure" : "", "data-routing-key": event.routing_key,
                                       "data-event-id": event.event_id },
      el("span", { className: "mono", text: (event.timestamp || "").replace("T", " ").replace("Z", "") + "  " }),
      el("strong", { text: event.routing_key }),
      el("span", { className: "delta", text: delta }),
      el("details", {}, el("summary", { text: "event" }), el("pre", { text: JSON.stringify(event, null, 2) }))));
    if ($("op-status").dataset.operationStatus === "unknown") setStatus("pending");
  }

  $("op-form").addEventListener("submit", (event) => {
    event.preventDefault();
    go(`#op=${$("op-id").value.trim().toLowerCase()}`);
  });

  return {
    async enter(state) {
      const next = (state.id || "").toLowerCase();
      if (id && id !== next) Live.unfollow("operation", id);
      $("op-id").value = next;
      $("op-timeline").replaceChildren();
      events = [];
      seen = new Set();
      id = null;
      $("op-summary").hidden = !next;
      if (!next) return;
      if (!UUID.test(next)) {
        setStatus("unknown", "an operation id is a UUID");
        return;
      }
      id = next;
      setStatus("unknown", "waiting for its first event");
      Live.listeners.add(listener);
      // The WebSocket replays what the boundary kept and then follows it live.
      Live.follow("operation", id);
      try {
        const known = await getJSON(`/operations/${id}`);
        if (id !== next) return;
        for (const event of known.events) addEvent(event);
        setStatus(known.status);
      } catch (error) {
        if (error.status !== 404 && id === next) setStatus("unknown", error.message);
      }
    },
    leave() {
      Live.listeners.delete(listener);
      if (id) Live.unfollow("operation", id);
      id = null;
    },
  };
})();

// ---------------------------------------------------------------------------------------
// Correlations: the matrix as a heatmap, re-drawn when the symbols' correlations change.

/** Diverging colour for r in [-1, 1]: blue (−1), near-white (0), red (+1) (ColorBrewer RdBu). */
function diverging(r) {
  const stops = [[-1, [33, 102, 172]], [-0.5, [103, 169, 207]], [-0.2, [209, 229, 240]], [0, [247, 247, 247]],
                 [0.2, [253, 219, 199]], [0.5, [239, 138, 98]], [1, [178, 24, 43]]];
  const x = Math.max(-1, Math.min(1, r));
  for (let i = 1; i < stops.length; i++) {
    const [x1, c1] = stops[i];
    if (x <= x1) {
      const [x0, c0] = stops[i - 1];
      const t = (x - x0) / (x1 - x0);
      return c0.map((c, k) => Math.round(c + (c1[k] - c) * t));
    }
  }
  return stops[stops.length - 1][1];
}

/** Average-linkage clustering on 1 − r (no value: distance 1); returns the leaf order. */
function clusterOrder(matrix) {
  const n = matrix.length;
  const distance = (i, j) => (matrix[i][j] === null ? 1 : 1 - matrix[i][j]);
  let clusters = Array.from({ length: n }, (_, i) => ({ members: [i], order: [i] }));
  while (clusters.length > 1) {
    let best = null;
    for (let a = 0; a < clusters.length; a++) {
      for (let b = a + 1; b < clusters.length; b++) {
        let sum = 0;
        for (const i of clusters[a].members) for (const j of clusters[b].members) sum += distance(i, j);
        const d = sum / (clusters[a].members.length * clusters[b].members.length);
        if (!best || d < best.d) best = { a, b, d };
      }
    }
    const merged = { members: clusters[best.a].members.concat(clusters[best.b].members),
                     order: clusters[best.a].order.concat(clusters[best.b].order) };
    clusters = clusters.filter((_, i) => i !== best.a && i !== best.b).concat([merged]);
  }
  return clusters.length ? clusters[0].order : [];
}

views.correlations = (() => {
  let state = null, matrixDoc = null, active = null, redraw = null, pairs = new Map();
  const map = $("heatmap");

  const listener = (message) => {
    if (!state || message.type !== "event" || message.routing_key !== "correlations.events.correlations_updated") return;
    const touched = (message.payload && message.payload.symbols) || [];
    if (!touched.some((s) => state.symbols.includes(s))) return;
    clearTimeout(redraw);
    redraw = setTimeout(() => load(), 250);  // a burst of updates draws once
  };

  async function loadWindows(selected) {
    const select = $("corr-window");
    let windows = [];
    try { windows = (await getJSON("/api/correlations/windows")).windows || []; } catch (error) { /* shown by the matrix */ }
    const chosen = Number(selected) || (windows.includes(60) ? 60 : windows[0]);
    if (chosen && !windows.includes(chosen)) windows.push(chosen);
    select.replaceChildren(...windows.sort((a, b) => a - b).map((w) => el("option", { value: String(w), text: `${w} returns` })));
    if (chosen) select.value = String(chosen);
    return chosen;
  }

  async function load() {
    if (!state || !state.symbols.length) return;
    const query = `symbols=${encodeURIComponent(state.symbols.join(","))}&window=${state.window}`;
    try {
      matrixDoc = await getJSON(`/api/correlations/correlations?${query}`);
      showError("corr-error", "");
      pairs = new Map();
      draw();
    } catch (error) {
      showError("corr-error", error.message);
      map.replaceChildren();
      $("corr-meta").textContent = "";
    }
  }

  function draw() {
    const { symbols, matrix } = matrixDoc;
    const n = symbols.length;
    const order = $("corr-cluster").checked ? clusterOrder(matrix) : symbols.map((_, i) => i);
    const size = n <= 8 ? 52 : n <= 16 ? 40 : n <= 30 ? 26 : 16;
    map.style.gridTemplateColumns = `max-content repeat(${n}, ${size}px)`;
    map.style.gridAutoRows = `${size}px`;
    const cells = [el("div", { className: "label corner" })];
    for (const j of order) cells.push(el("div", { className: "label col", role: "columnheader", text: symbols[j] }));
    order.forEach((i, row) => {
      cells.push(el("div", { className: "label row", role: "rowheader", text: symbols[i] }));
      order.forEach((j, column) => {
        const value = matrix[i][j];
        const cell = el("div", { className: "cell", role: "gridcell", "data-a": symbols[i], "data-b": symbols[j],
                                 "data-value": JSON.stringify(value), "data-row": row, "data-column": column });
        if (value === null) {
          cell.classList.add("null");
          cell.textContent = size >= 26 ? "·" : "";
        } else {
          const [r, g, b] = diverging(value);
          cell.style.background = `rgb(${r}, ${g}, ${b})`;
          if (Math.abs(value) > 0.6) cell.classList.add("dark");
          if (size >= 40) cell.textContent = value.toFixed(2);
        }
        cell.title = `${symbols[i]} × ${symbols[j]}: ${value === null ? "no value" : value}`;
        cells.push(cell);
      });
    });
    map.replaceChildren(...cells);
    map.tabIndex = 0;
    $("corr-meta").textContent = `${n} symbols, window ${matrixDoc.window}, as of ${matrixDoc.as_of || "–"}`
      + ($("corr-cluster").checked ? ", ordered by clustering" : "");
    active = null;
  }

  async function describe(cell) {
    if (!matrixDoc) return;
    if (active) active.classList.remove("active");
    active = cell;
    cell.classList.add("active");
    const a = cell.dataset.a, b = cell.dataset.b, value = JSON.parse(cell.dataset.value), window = matrixDoc.window;
    const text = `${a} × ${b}: ${value === null ? "no value" : value.toFixed(4)}`;
    $("corr-readout").textContent = `${text} (window ${window})`;
    const key = `${a}/${b}/${window}`;
    try {
      if (!pairs.has(key)) pairs.set(key, getJSON(`/api/correlations/correlations/${encodeURIComponent(a)}/${encodeURIComponent(b)}?window=${window}`));
      const pair = await pairs.get(key);
      if (active === cell) {
        $("corr-readout").textContent = `${text}, ${pair.observations} observations, window ${window}, as of ${pair.as_of || "–"}`;
      }
    } catch (error) { /* the value alone is shown */ }
  }

  map.addEventListener("mouseover", (event) => {
    const cell = event.target.closest(".cell");
    if (cell && cell !== active) describe(cell);
  });
  map.addEventListener("keydown", (event) => {
    const moves = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1], Home: [0, -1e9], End: [0, 1e9] };
    if (!moves[event.key] || !matrixDoc) return;
    event.preventDefault();
    const n = matrixDoc.symbols.length;
    const row = active ? Number(active.dataset.row) : 0, column = active ? Number(active.dataset.column) : 0;
    const [dr, dc] = active ? moves[event.key] : [0, 0];
    const next = map.querySelector(`.cell[data-row="${Math.max(0, Math.min(n - 1, row + dr))}"][data-column="${Math.max(0, Math.min(n - 1, column + dc))}"]`);
    if (next) describe(next);
  });
  map.addEventListener("focus", () => { if (!active) { const first = map.querySelector(".cell"); if (first) describe(first); } });

  $("corr-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const list = $("corr-symbols").value.split(",").map((s) => s.trim().toUpperCase()).filter(Boolean);
    go(`#correlations?symbols=${list.join(",")}&window=${$("corr-window").value}`);
  });
  $("corr-all").addEventListener("click", async () => {
    $("corr-symbols").value = (await symbols(true)).slice(0, 40).join(",");
  });
  $("corr-cluster").addEventListener("change", () => { if (matrixDoc) draw(); });
  typeahead($("corr-symbols"), $("corr-suggest"), { multiple: true });

  return {
    async enter(next) {
      const list = next.symbols.split(",").map((s) => s.trim().toUpperCase()).filter(Boolean);
      $("corr-symbols").value = list.join(",");
      const window = await loadWindows(next.window);
      state = { symbols: list, window };
      Live.listeners.add(listener);
      Live.follow("pattern", "correlations.events.correlations_updated");
      if (!list.length) {
        map.replaceChildren();
        $("corr-meta").textContent = "Choose symbols (or All symbols) and a window.";
        return;
      }
      await load();
    },
    leave() {
      Live.listeners.delete(listener);
      Live.unfollow("pattern", "correlations.events.correlations_updated");
      state = null;
    },
  };
})();

// ---------------------------------------------------------------------------------------
// Symbol: prices and simple returns as charts, with the summary beside them.

function lineChart(points, { format }) {
  const width = 560, height = 240, left = 56, right = 10, top = 10, bottom = 26;
  if (!points.length) return el("p", { className: "muted", text: "no data" });
  const values = points.map((p) => p.value);
  let low = Math.min(...values), high = Math.max(...values);
  if (low === high) { low -= 1; high += 1; }
  const x = (i) => left + (points.length === 1 ? 0 : (i * (width - left - right)) / (points.length - 1));
  const y = (v) => top + ((high - v) * (height - top - bottom)) / (high - low);
  const path = points.map((p, i) => `${i ? "L" : "M"}${x(i).toFixed(1)},${y(p.value).toFixed(1)}`).join("");
  return svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img",
                      "aria-label": `${points.length} closes from ${points[0].date} to ${points[points.length - 1].date}, between ${format(low)} and ${format(high)}` },
    svg("line", { class: "axis", x1: left, y1: top, x2: left, y2: height - bottom }),
    svg("line", { class: "axis", x1: left, y1: height - bottom, x2: width - right, y2: height - bottom }),
    svg("text", { x: left - 6, y: top + 8, "text-anchor": "end" }, format(high)),
    svg("text", { x: left - 6, y: height - bottom, "text-anchor": "end" }, format(low)),
    svg("text", { x: left, y: height - 8 }, points[0].date),
    svg("text", { x: width - right, y: height - 8, "text-anchor": "end" }, points[points.length - 1].date),
    svg("path", { d: path, fill: "none", stroke: "#1f5fbf", "stroke-width": 1.6 }),
    ...points.map((p, i) => svg("circle", { cx: x(i).toFixed(1), cy: y(p.value).toFixed(1), r: 2.2, fill: "#1f5fbf" },
                                svg("title", {}, `${p.date}: ${format(p.value)}`))));
}

function barChart(points) {
  const width = 560, height = 240, left = 56, right = 10, top = 10, bottom = 26;
  if (!points.length) return el("p", { className: "muted", text: "no returns yet (a symbol needs two closes)" });
  const extent = Math.max(...points.map((p) => Math.abs(p.value))) || 0.01;
  const band = (width - left - right) / points.length;
  const zero = top + (height - top - bottom) / 2;
  const scale = (height - top - bottom) / 2 / extent;
  const percent = (v) => `${(v * 100).toFixed(2)}%`;
  return svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img",
                      "aria-label": `${points.length} daily returns between ${percent(-extent)} and ${percent(extent)}` },
    svg("line", { class: "axis", x1: left, y1: zero, x2: width - right, y2: zero }),
    svg("text", { x: left - 6, y: top + 8, "text-anchor": "end" }, percent(extent)),
    svg("text", { x: left - 6, y: height - bottom, "text-anchor": "end" }, percent(-extent)),
    svg("text", { x: left, y: height - 8 }, points[0].date),
    svg("text", { x: width - right, y: height - 8, "text-anchor": "end" }, points[points.length - 1].date),
    ...points.map((p, i) => {
      const h = Math.max(0.5, Math.abs(p.value) * scale);
      return svg("rect", { x: (left + i * band + band * 0.1).toFixed(1), y: (p.value >= 0 ? zero - h : zero).toFixed(1),
                           width: Math.max(0.8, band * 0.8).toFixed(1), height: h.toFixed(1),
                           fill: p.value >= 0 ? "#1a7f37" : "#b42318" },
                 svg("title", {}, `${p.date}: ${percent(p.value)}`));
    }));
}

views.symbol = (() => {
  let shown = null;
  const listener = (message) => {
    if (!shown || message.type !== "event") return;
    if (message.routing_key === "returns.events.returns_calculated" && message.payload && message.payload.symbol === shown) load(shown);
  };

  async function load(symbol) {
    try {
      const [prices, returns, summary] = await Promise.all([
        getJSON(`/api/returns/prices/${encodeURIComponent(symbol)}`),
        getJSON(`/api/returns/returns/${encodeURIComponent(symbol)}?kind=simple`),
        getJSON(`/api/returns/returns/${encodeURIComponent(symbol)}/summary`),
      ]);
      if (shown !== symbol) return;
      showError("symbol-error", "");
      const closes = (prices.prices || []).map((p) => ({ date: p.date, value: p.close }));
      $("price-chart").replaceChildren(lineChart(closes, { format: (v) => v.toFixed(2) }));
      $("return-chart").replaceChildren(barChart(returns.returns || []));
      const facts = [["count", summary.count], ["first date", summary.first_date], ["last date", summary.last_date],
                     ["mean", summary.mean], ["volatility", summary.volatility],
                     ["cumulative return", summary.cumulative_return], ["max drawdown", summary.max_drawdown]];
      $("symbol-summary").tBodies[0].replaceChildren(...facts.map(([name, value]) =>
        el("tr", { "data-field": name.replace(/ /g, "_") }, el("th", { scope: "row", text: name }),
           el("td", { text: typeof value === "number" && !Number.isInteger(value) ? value.toFixed(6) : value ?? "–" }))));
    } catch (error) {
      if (shown !== symbol) return;
      showError("symbol-error", error.message);
      $("price-chart").replaceChildren();
      $("return-chart").replaceChildren();
      $("symbol-summary").tBodies[0].replaceChildren();
    }
  }

  $("symbol-form").addEventListener("submit", (event) => {
    event.preventDefault();
    go(`#symbol=${$("symbol-name").value.trim().toUpperCase()}`);
  });
  typeahead($("symbol-name"), $("symbol-suggest"), { multiple: false });

  return {
    enter(state) {
      shown = (state.symbol || "").toUpperCase();
      $("symbol-name").value = shown;
      Live.listeners.add(listener);
      Live.follow("pattern", "returns.events.returns_calculated");
      if (shown) load(shown);
    },
    leave() {
      Live.listeners.delete(listener);
      Live.unfollow("pattern", "returns.events.returns_calculated");
      shown = null;
    },
  };
})();

window.addEventListener("hashchange", route);
Live.connect();
route();
