// The data side: GET /v1/usage, time windows, and rows summed per model, key and bucket.
// Everything is UTC, as the ledger is.

const USAGE_URL = "/v1/usage";
export const HOUR = 3_600_000;
export const DAY = 24 * HOUR;
export const RANGES = {
  "24h": { label: "Last 24 hours", days: 1, buckets: ["hour"] },
  "7d": { label: "Last 7 days", days: 7, buckets: ["hour", "day"] },
  "30d": { label: "Last 30 days", days: 30, buckets: ["day", "hour"] },
};
// Models beyond this many are summed into "Other" in the charts (never in the tables).
const MAX_SERIES = 8;
const PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#ff9da7", "#9c755f"];
const OTHER_COLOR = "#a0a7b4";

export class UsageError extends Error {
  constructor(kind, message, status = 0) {
    super(message);
    this.kind = kind; // "auth", "missing", "network" or "server"
    this.status = status;
  }
}

/** The rows of one GET /v1/usage; the API's error message on failure. */
export async function fetchRows(key, params) {
  const url = new URL(USAGE_URL, location.origin);
  for (const [name, value] of params) url.searchParams.append(name, value);
  let response;
  try {
    response = await fetch(url, {
      headers: { Authorization: `Bearer ${key}`, Accept: "application/json" },
      cache: "no-store",
      credentials: "omit",
    });
  } catch (error) {
    throw new UsageError("network", `Could not reach the gateway (${error.message}).`);
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) {
    const message = body?.error?.message || `${response.status} ${response.statusText}`.trim();
    if (response.status === 401 || response.status === 403) throw new UsageError("auth", message, response.status);
    if (response.status === 404) throw new UsageError("missing", message, response.status);
    throw new UsageError("server", message, response.status);
  }
  if (!body || !Array.isArray(body.rows)) throw new UsageError("server", "The usage API answered without rows.");
  return body.rows;
}

const floorTo = (t, step) => Math.floor(t / step) * step;
const isoDay = (t) => new Date(t).toISOString().slice(0, 10);

/** The buckets of a range: the last 24 hours rolling, or whole days up to now. */
export function timeWindow(range, bucket, now) {
  const step = bucket === "hour" ? HOUR : DAY;
  const start = range === "24h" ? floorTo(now, HOUR) - 23 * HOUR : floorTo(now, DAY) - (RANGES[range].days - 1) * DAY;
  const buckets = [];
  for (let t = start; t <= now; t += step) buckets.push(t);
  return { range, bucket, step, start, buckets, startDay: isoDay(start), endDay: isoDay(now) };
}

// int64 fields arrive as JSON strings (proto3 JSON); doubles as numbers.
const num = (value) => {
  const n = Number(value);
  return Number.isFinite(n) ? n : 0;
};

export function emptyTotals() {
  return { requests: 0, failed: 0, prompt: 0, completion: 0, cost: 0, latencySum: 0, scored: 0, scoreSum: 0 };
}

function addRow(totals, row) {
  const requests = num(row.requests);
  totals.requests += requests;
  totals.failed += num(row.failed_requests);
  totals.prompt += num(row.prompt_tokens);
  totals.completion += num(row.completion_tokens);
  totals.cost += num(row.cost_usd);
  totals.latencySum += num(row.avg_latency_ms) * requests;
  // Evaluation scores: the mean is weighted by the requests scored in each row.
  const scored = num(row.evaluated_requests);
  totals.scored += scored;
  totals.scoreSum += num(row.avg_quality_score) * scored;
}

function addTotals(into, from) {
  for (const field of Object.keys(into)) into[field] += from[field];
}

export const tokensOf = (t) => t.prompt + t.completion;
export const errorRateOf = (t) => (t.requests ? t.failed / t.requests : null);
export const latencyOf = (t) => (t.requests ? t.latencySum / t.requests : null);
export const qualityOf = (t) => (t.scored ? t.scoreSum / t.scored : null);

function bucketTime(row, bucket) {
  return bucket === "hour" ? Date.parse(row.hour) : Date.parse(`${row.day}T00:00:00Z`);
}

/** Rows of (bucket, dimension) into per-group and per-bucket totals, dropping rows outside the window. */
function groupRows(rows, win, idOf, describe) {
  const index = new Map(win.buckets.map((t, i) => [t, i]));
  const groups = new Map();
  for (const row of rows) {
    const i = index.get(bucketTime(row, win.bucket));
    if (i === undefined) continue;
    const id = idOf(row);
    let group = groups.get(id);
    if (!group) {
      group = { id, ...describe(row), totals: emptyTotals(), buckets: win.buckets.map(emptyTotals) };
      groups.set(id, group);
    }
    addRow(group.totals, row);
    addRow(group.buckets[i], row);
  }
  return [...groups.values()].sort((a, b) => b.totals.requests - a.totals.requests || a.label.localeCompare(b.label));
}

/** Everything the page shows, from rows grouped by (bucket, model) and by (bucket, key, project). */
export function summarize(modelRows, keyRows, win) {
  const models = groupRows(modelRows, win, (r) => r.model, (r) => ({ label: r.model || "(unknown model)" }));
  const keys = groupRows(
    keyRows,
    win,
    (r) => r.key_id,
    (r) => ({ label: r.key_masked || r.key_id || "(no key)", project: r.project }),
  );
  const total = emptyTotals();
  const perBucket = win.buckets.map(emptyTotals);
  models.forEach((model, i) => {
    // Colours follow rank; the models that chartSeries() sums as "Other" share its grey.
    model.color = models.length <= MAX_SERIES || i < MAX_SERIES - 1 ? PALETTE[i] : OTHER_COLOR;
    addTotals(total, model.totals);
    model.buckets.forEach((b, j) => addTotals(perBucket[j], b));
  });
  return { win, models, keys, total, perBucket };
}

/** The models drawn as chart series: the busiest ones, the rest summed as "Other". */
export function chartSeries(models) {
  if (models.length <= MAX_SERIES) return models;
  const rest = models.slice(MAX_SERIES - 1);
  const other = {
    id: "\u0000other",
    label: `Other (${rest.length} models)`,
    color: OTHER_COLOR,
    totals: emptyTotals(),
    buckets: models[0].buckets.map(emptyTotals),
  };
  for (const model of rest) {
    addTotals(other.totals, model.totals);
    model.buckets.forEach((b, i) => addTotals(other.buckets[i], b));
  }
  return [...models.slice(0, MAX_SERIES - 1), other];
}
