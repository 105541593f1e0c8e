// Number and time formatting for tiles, tables, axes and tooltips. Times are UTC, as the ledger's are.

const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
const integer = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
const compact = new Intl.NumberFormat("en-US", { notation: "compact", maximumFractionDigits: 1 });

export function formatCount(n) {
  return integer.format(n);
}

export function formatAxisCount(n) {
  return Math.abs(n) < 10_000 ? integer.format(n) : compact.format(n);
}

export function formatUsd(n) {
  if (n === 0) return "$0.00";
  if (Math.abs(n) >= 1) return `$${n.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 })}`;
  // Small amounts keep about three significant digits: $0.00123, $0.50.
  const decimals = Math.min(8, Math.max(2, 2 - Math.floor(Math.log10(Math.abs(n)))));
  return `$${n.toFixed(decimals).replace(/(\.\d\d\d*?)0+$/, "$1")}`;
}

export function formatMs(ms) {
  if (ms === null) return "–";
  if (ms === 0) return "0 ms";
  if (ms >= 10_000) return `${(ms / 1000).toFixed(1)} s`;
  if (ms >= 1000) return `${(ms / 1000).toFixed(2)} s`;
  return `${ms.toFixed(ms < 10 ? 1 : 0)} ms`;
}

export function formatRate(rate) {
  if (rate === null) return "–";
  const pct = rate * 100;
  if (pct === 0 || pct === 100) return `${pct}%`;
  return `${pct < 0.1 ? pct.toFixed(2) : pct.toFixed(1)}%`;
}

// Axis ticks are round numbers: no padding decimals ("5 ms", "20%", "$0").
const trim = (n) => String(Number(n.toPrecision(3)));

export function formatAxisUsd(n) {
  return n === 0 ? "$0" : formatUsd(n);
}

export function formatAxisMs(ms) {
  return ms >= 1000 ? `${trim(ms / 1000)} s` : `${trim(ms)} ms`;
}

export function formatAxisRate(rate) {
  return `${trim(rate * 100)}%`;
}

const pad2 = (n) => String(n).padStart(2, "0");

/** A bucket's start as an axis label ("14:00", "Nov 22") or, long, as a tooltip title. */
export function formatBucket(t, bucket, long = false) {
  const d = new Date(t);
  const date = `${MONTHS[d.getUTCMonth()]} ${d.getUTCDate()}`;
  if (bucket === "day") return long ? `${date}, ${d.getUTCFullYear()} (UTC)` : date;
  const hour = `${pad2(d.getUTCHours())}:00`;
  return long ? `${date}, ${hour}–${pad2((d.getUTCHours() + 1) % 24)}:00 UTC` : hour;
}
