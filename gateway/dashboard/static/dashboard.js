// Interlock usage dashboard: the page. It reads GET /v1/usage with the admin key
// and draws tiles, charts and tables from the rows.
//
// The key comes from the URL fragment (#key=..., which never reaches a server or
// a log) or the form; it is kept in sessionStorage only, dropped from the visible
// URL, and sent as `Authorization: Bearer <key>`. body[data-state] says where the
// page is: loading, ready, error or auth.

import { legend, lines, stackedBars } from "./charts.js";
import { $, el, swatch } from "./dom.js";
import {
  formatAxisCount,
  formatAxisMs,
  formatAxisRate,
  formatAxisUsd,
  formatCount,
  formatMs,
  formatRate,
  formatUsd,
} from "./format.js";
import {
  RANGES,
  chartSeries,
  errorRateOf,
  fetchRows,
  latencyOf,
  qualityOf,
  summarize,
  timeWindow,
  tokensOf,
} from "./usage.js";

const KEY_STORAGE = "interlock.dashboard.key";
const REFRESH_MS = 60_000;
const ERROR_COLOR = "#d1495b";
const KEY_COLOR = "#4e79a7";
const BAD_ERROR_RATE = 0.05;
// Filters the usage API applies, by query parameter, with the name a chip shows.
const FILTERS = { key_id: "Key", project: "Project", model: "Model" };
const state = { range: "24h", bucket: "hour", filters: {}, seq: 0, timer: null, view: null };

// ---------------------------------------------------------------------------
// The key.

const memoryStore = new Map(); // when the browser refuses sessionStorage

function storedKey() {
  try {
    return sessionStorage.getItem(KEY_STORAGE);
  } catch {
    return memoryStore.get(KEY_STORAGE) ?? null;
  }
}

function storeKey(key) {
  try {
    if (key) sessionStorage.setItem(KEY_STORAGE, key);
    else sessionStorage.removeItem(KEY_STORAGE);
  } catch {
    if (key) memoryStore.set(KEY_STORAGE, key);
    else memoryStore.delete(KEY_STORAGE);
  }
}

/** Take a key from #key=..., then drop the fragment from the address bar and history. */
function adoptFragmentKey() {
  if (!location.hash) return;
  const key = new URLSearchParams(location.hash.slice(1)).get("key");
  if (key && key.trim()) storeKey(key.trim());
  history.replaceState(null, "", location.pathname + location.search);
}

// ---------------------------------------------------------------------------
// Tiles, charts and tables.

function setTile(id, value, text, sub) {
  const tile = $(`#${id}`);
  const valueNode = tile.querySelector(".value");
  valueNode.textContent = text;
  valueNode.dataset.value = value === null ? "" : String(value);
  tile.querySelector(".sub").textContent = sub;
}

const plural = (n, word) => `${formatCount(n)} ${word}${n === 1 ? "" : "s"}`;

function renderTiles(view) {
  const t = view.total;
  const rate = errorRateOf(t);
  const ok = `${formatCount(t.requests - t.failed)} ok · ${formatCount(t.failed)} failed`;
  setTile("tile-requests", t.requests, formatCount(t.requests), ok);
  setTile("tile-error-rate", rate, formatRate(rate), `${formatCount(t.failed)} of ${plural(t.requests, "request")}`);
  $("#tile-error-rate").classList.toggle("bad", rate !== null && rate >= BAD_ERROR_RATE);
  const split = `${formatCount(t.prompt)} in · ${formatCount(t.completion)} out`;
  setTile("tile-tokens", tokensOf(t), formatCount(tokensOf(t)), split);
  const spread = `${plural(view.models.length, "model")} · ${plural(view.keys.length, "key")}`;
  setTile("tile-cost", t.cost, formatUsd(t.cost), spread);
  setTile("tile-latency", latencyOf(t), formatMs(latencyOf(t)), "mean per request");
  const quality = qualityOf(t);
  const scoreText = quality === null ? "–" : quality.toFixed(2);
  setTile("tile-quality", quality, scoreText, `${plural(t.scored, "evaluated request")} · 0 to 1`);
}

function renderCharts(view) {
  const { win } = view;
  const series = chartSeries(view.models);
  for (const id of ["requests", "tokens", "cost", "latency"]) legend($(`#chart-${id} .legend`), series);
  const counts = { formatValue: formatCount, formatTick: formatAxisCount, integerOnly: true };
  stackedBars($("#chart-requests .plot"), win, series, (b) => b.requests, counts);
  stackedBars($("#chart-tokens .plot"), win, series, tokensOf, counts);
  const usd = { formatValue: formatUsd, formatTick: formatAxisUsd };
  stackedBars($("#chart-cost .plot"), win, series, (b) => b.cost, usd);
  lines($("#chart-latency .plot"), win, series, latencyOf, { formatValue: formatMs, formatTick: formatAxisMs });
  const errors = { label: "All models", color: ERROR_COLOR, buckets: view.perBucket, area: true };
  legend($("#chart-errors .legend"), [errors]);
  lines($("#chart-errors .plot"), win, [errors], errorRateOf, { formatValue: formatRate, formatTick: formatAxisRate });
}

function numberCell(text, value) {
  const cell = el("td", { class: "num" }, text);
  cell.dataset.value = value === null ? "" : String(value);
  return cell;
}

/** The columns both tables end with: requests, tokens, cost, error rate, latency. */
function metricCells(t) {
  const rate = errorRateOf(t);
  const errors = numberCell(formatRate(rate), rate);
  errors.classList.toggle("bad", rate !== null && rate >= BAD_ERROR_RATE);
  return {
    requests: numberCell(formatCount(t.requests), t.requests),
    rest: [
      numberCell(formatCount(tokensOf(t)), tokensOf(t)),
      numberCell(formatUsd(t.cost), t.cost),
      errors,
      numberCell(formatMs(latencyOf(t)), latencyOf(t)),
    ],
  };
}

function fillTable(tbody, items, columns, toRow) {
  if (!items.length) {
    const row = el("tr", { class: "empty-row" });
    row.append(el("td", { colspan: String(columns) }, "No usage in this range"));
    tbody.replaceChildren(row);
    return;
  }
  tbody.replaceChildren(...items.map(toRow));
}

/** A bar for a share of the busiest row, and the share of all requests as text. */
function shareCell(requests, view, busiest, color) {
  const meter = el("span", { class: "meter" });
  const fill = meter.appendChild(el("span", { class: "meter-fill" }));
  fill.style.width = `${((100 * requests) / (busiest || 1)).toFixed(1)}%`;
  fill.style.backgroundColor = color;
  const cell = el("td", { class: "share" });
  cell.append(meter, el("span", { class: "meter-text" }, formatRate(requests / (view.total.requests || 1))));
  return cell;
}

/** A table row that, clicked (or Enter), narrows the whole page to its model or key. */
function filterRow(name, value, title) {
  const row = el("tr");
  if (!value || state.filters[name] === value) return row;
  row.classList.add("pick");
  row.tabIndex = 0;
  row.title = title;
  const pick = () => setFilter(name, value);
  row.addEventListener("click", pick);
  row.addEventListener("keydown", (event) => event.key === "Enter" && pick());
  return row;
}

function renderModelTable(view) {
  const busiest = view.models[0]?.totals.requests;
  fillTable($("#table-models tbody"), view.models, 7, (model) => {
    const { requests, rest } = metricCells(model.totals);
    const row = filterRow("model", model.id, `Show only ${model.label}`);
    row.dataset.model = model.id;
    const name = el("td", { class: "name" });
    name.appendChild(el("span", { class: "cell-label" })).append(swatch(model.color), el("span", {}, model.label));
    row.append(name, requests, shareCell(model.totals.requests, view, busiest, model.color), ...rest);
    return row;
  });
}

function renderKeyTable(view) {
  const busiest = view.keys[0]?.totals.requests;
  fillTable($("#table-keys tbody"), view.keys, 8, (key) => {
    const { requests, rest } = metricCells(key.totals);
    const row = filterRow("key_id", key.id, `Show only the key ${key.label}`);
    row.dataset.keyId = key.id;
    const name = el("td", { class: "name key" }, key.label);
    if (key.id) name.title = key.id;
    const project = el("td", { class: "project" }, key.project || "–");
    row.append(name, project, requests, shareCell(key.totals.requests, view, busiest, KEY_COLOR), ...rest);
    return row;
  });
}

/** One chip per active filter; its button removes the filter. */
function renderFilters(view) {
  const chips = Object.entries(state.filters).map(([name, value]) => {
    const known = name === "key_id" ? view?.keys.find((k) => k.id === value)?.label : null;
    const chip = el("span", { class: "chip" });
    chip.dataset.filter = name;
    chip.append(el("span", { class: "chip-name" }, `${FILTERS[name]}:`), el("span", {}, known || value));
    const label = `Remove the ${FILTERS[name].toLowerCase()} filter`;
    const remove = chip.appendChild(el("button", { type: "button", class: "chip-remove", "aria-label": label }, "×"));
    remove.addEventListener("click", () => setFilter(name, null));
    return chip;
  });
  $("#filters").replaceChildren(...chips);
}

function render(view) {
  renderFilters(view);
  renderTiles(view);
  renderCharts(view);
  renderModelTable(view);
  renderKeyTable(view);
}

// ---------------------------------------------------------------------------
// Page states and loading.

function show(mode) {
  document.body.dataset.state = mode;
  const signedIn = mode !== "auth";
  $("#auth").hidden = signedIn;
  $("#dashboard").hidden = !signedIn;
  $("#controls").hidden = !signedIn;
}

function showAuth(message) {
  stopTimer();
  state.view = null;
  show("auth");
  const alert = $("#auth-message");
  alert.textContent = message;
  alert.hidden = !message;
  const input = $("#key-input");
  input.value = "";
  input.focus();
}

function stopTimer() {
  clearTimeout(state.timer);
  state.timer = null;
}

async function load() {
  stopTimer();
  const key = storedKey();
  if (!key) return showAuth("");
  const seq = ++state.seq;
  const win = timeWindow(state.range, state.bucket, Date.now());
  const base = [
    ["start_day", win.startDay],
    ["end_day", win.endDay],
    ...Object.entries(state.filters),
    ["group_by", win.bucket],
  ];
  show("loading");
  $("#status").textContent = "Loading…";
  try {
    const [modelRows, keyRows] = await Promise.all([
      fetchRows(key, [...base, ["group_by", "model"]]),
      fetchRows(key, [...base, ["group_by", "key"], ["group_by", "project"]]),
    ]);
    if (seq !== state.seq) return;
    state.view = summarize(modelRows, keyRows, win);
    render(state.view);
    $("#error").hidden = true;
    const buckets = win.bucket === "hour" ? "hourly" : "daily";
    const updated = new Date().toISOString().slice(11, 19);
    $("#status").textContent = `${RANGES[state.range].label} · ${buckets} buckets · updated ${updated} UTC`;
    show("ready");
  } catch (error) {
    if (seq !== state.seq) return;
    if (error.kind === "auth") {
      storeKey(null);
      return showAuth(`The key was refused (${error.status}): ${error.message}`);
    }
    $("#error").textContent =
      error.kind === "missing" ? `This gateway does not serve the usage API: ${error.message}` : error.message;
    $("#error").hidden = false;
    $("#status").textContent = "Could not load usage.";
    show("error");
  }
  if (document.visibilityState === "visible") state.timer = setTimeout(load, REFRESH_MS);
}

// ---------------------------------------------------------------------------
// Controls: range, bucket and filters live in the query string, so a view can be shared.

function readControls() {
  const params = new URLSearchParams(location.search);
  if (Object.hasOwn(RANGES, params.get("range"))) state.range = params.get("range");
  state.bucket = params.get("bucket") || RANGES[state.range].buckets[0];
  for (const name of Object.keys(FILTERS)) {
    if (params.get(name)) state.filters[name] = params.get(name);
  }
}

function setFilter(name, value) {
  if (value) state.filters[name] = value;
  else delete state.filters[name];
  syncControls();
  renderFilters(state.view);
  load();
}

function syncControls() {
  const allowed = RANGES[state.range].buckets;
  if (!allowed.includes(state.bucket)) state.bucket = allowed[0];
  for (const button of document.querySelectorAll("[data-range]")) {
    button.setAttribute("aria-pressed", String(button.dataset.range === state.range));
  }
  for (const button of document.querySelectorAll("[data-bucket]")) {
    button.setAttribute("aria-pressed", String(button.dataset.bucket === state.bucket));
    button.disabled = !allowed.includes(button.dataset.bucket);
  }
  const params = new URLSearchParams({ range: state.range, bucket: state.bucket, ...state.filters });
  history.replaceState(null, "", `${location.pathname}?${params}`);
}

function wire() {
  for (const button of document.querySelectorAll("[data-range]")) {
    button.addEventListener("click", () => {
      state.range = button.dataset.range;
      state.bucket = RANGES[state.range].buckets[0];
      syncControls();
      load();
    });
  }
  for (const button of document.querySelectorAll("[data-bucket]")) {
    button.addEventListener("click", () => {
      state.bucket = button.dataset.bucket;
      syncControls();
      load();
    });
  }
  $("#refresh").addEventListener("click", load);
  $("#sign-out").addEventListener("click", () => {
    storeKey(null);
    state.seq++; // drop any answer still on its way
    showAuth("");
  });
  $("#auth-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("#key-input").value.trim();
    if (!key) return;
    storeKey(key);
    load();
  });
  window.addEventListener("hashchange", () => {
    adoptFragmentKey();
    load();
  });
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible" && state.view && !state.timer) load();
  });
  let resizing = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizing);
    resizing = setTimeout(() => state.view && renderCharts(state.view), 150);
  });
}

adoptFragmentKey();
readControls();
syncControls();
wire();
load();
