// Time-series charts drawn as inline SVG: stacked bars and lines over a bucketed
// window, with gridlines, axis labels, a legend and a hover tooltip.
//
// A series is { label, color, buckets: [totals per bucket] }; valueOf(totals)
// picks the number to draw, or null where there is nothing to draw; formatValue
// writes it for the tooltip and formatTick for the y axis.

import { $, el, svg, swatch } from "./dom.js";
import { formatBucket } from "./format.js";

const HEIGHT = 220;
const MARGIN = { top: 12, right: 14, bottom: 28 };
const LABEL_SPACING = 64; // px per x-axis label, at least

/** Round tick steps (1, 2, 2.5, 5 × 10^n) from 0 to at least max. */
function niceScale(max, integerOnly, count = 4) {
  const top = max > 0 ? max : 1;
  const raw = top / count;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const norm = raw / magnitude;
  let step = (norm <= 1 ? 1 : norm <= 2 ? 2 : norm <= 2.5 ? 2.5 : norm <= 5 ? 5 : 10) * magnitude;
  if (integerOnly) step = Math.max(1, Math.ceil(step));
  const ticks = [0];
  while (ticks[ticks.length - 1] < top - step * 1e-9) ticks.push(Number((ticks.length * step).toPrecision(12)));
  return { max: ticks[ticks.length - 1], ticks };
}

/** Label every k-th bucket, k chosen so labels never crowd and fall on round times. */
function labelEvery(win, plotWidth) {
  const fits = Math.max(1, Math.floor(plotWidth / LABEL_SPACING));
  const choices = win.bucket === "hour" ? [1, 2, 3, 4, 6, 12, 24, 48, 72, 168] : [1, 2, 3, 7, 14, 30];
  return choices.find((k) => win.buckets.length / k <= fits) ?? choices[choices.length - 1];
}

/**
 * The frame every chart shares: an SVG with gridlines, y ticks and x labels.
 * Returns the SVG, the plot area, and the scales for the marks.
 */
function frame(container, win, yMax, formatTick, integerOnly) {
  const width = Math.max(320, Math.floor(container.clientWidth || 600));
  const scale = niceScale(yMax, integerOnly);
  const tickLabels = scale.ticks.map(formatTick);
  const left = 14 + 7 * Math.max(...tickLabels.map((s) => s.length));
  const plot = {
    left,
    top: MARGIN.top,
    width: width - left - MARGIN.right,
    height: HEIGHT - MARGIN.top - MARGIN.bottom,
  };
  const root = svg("svg", { class: "chart-svg", viewBox: `0 0 ${width} ${HEIGHT}`, width, height: HEIGHT });
  const y = (v) => plot.top + plot.height - (v / scale.max) * plot.height;
  const band = plot.width / win.buckets.length;
  const x = (i) => plot.left + i * band;
  const bottom = plot.top + plot.height;

  const grid = svg("g", { class: "grid" }, root);
  scale.ticks.forEach((tick, i) => {
    const line = { x1: plot.left, x2: plot.left + plot.width, y1: y(tick), y2: y(tick) };
    svg("line", { ...line, class: tick ? "" : "baseline" }, grid);
    svg("text", { x: plot.left - 8, y: y(tick), class: "tick y" }, grid).textContent = tickLabels[i];
  });
  const k = labelEvery(win, plot.width);
  const axis = svg("g", { class: "x-axis" }, root);
  win.buckets.forEach((t, i) => {
    if (Math.round(t / win.step) % k !== 0) return;
    const cx = x(i) + band / 2;
    svg("line", { x1: cx, x2: cx, y1: bottom, y2: bottom + 4, class: "tick-mark" }, axis);
    // Hourly axes name the day at midnight.
    const midnight = win.bucket === "hour" && new Date(t).getUTCHours() === 0;
    const label = svg("text", { x: cx, y: bottom + 18, class: midnight ? "tick x strong" : "tick x" }, axis);
    label.textContent = formatBucket(t, midnight ? "day" : win.bucket);
  });
  container.replaceChildren(root);
  return { root, plot, x, y, band };
}

/** Invisible columns that highlight their bucket and show its values in the tooltip. */
function hoverLayer(chart, win, describe) {
  const { root, plot, x, band } = chart;
  const highlight = svg("rect", { class: "hover-band", x: 0, y: plot.top, width: band, height: plot.height });
  root.insertBefore(highlight, root.firstChild);
  const layer = svg("g", { class: "hits" }, root);
  win.buckets.forEach((t, i) => {
    const hit = svg("rect", { class: "hit", x: x(i), y: plot.top, width: band, height: plot.height }, layer);
    hit.addEventListener("mouseenter", (event) => {
      highlight.setAttribute("x", x(i));
      highlight.classList.add("on");
      showTooltip(event, formatBucket(t, win.bucket, true), describe(i));
    });
    hit.addEventListener("mousemove", moveTooltip);
    hit.addEventListener("mouseleave", () => {
      highlight.classList.remove("on");
      hideTooltip();
    });
  });
}

function emptyPlot(container) {
  container.replaceChildren(el("div", { class: "empty" }, "No requests in this range"));
}

/** Bars per bucket, one segment per series, stacked in series order. */
export function stackedBars(container, win, series, valueOf, { formatValue, formatTick, integerOnly = false }) {
  const totals = win.buckets.map((_, i) => series.reduce((sum, s) => sum + valueOf(s.buckets[i]), 0));
  if (!totals.some((v) => v > 0)) return emptyPlot(container);
  const chart = frame(container, win, Math.max(...totals), formatTick, integerOnly);
  const { root, x, y, band } = chart;
  const gap = band > 6 ? Math.min(band * 0.28, 10) : 0.5;
  const marks = svg("g", { class: "marks" }, root);
  win.buckets.forEach((_, i) => {
    let base = 0;
    for (const s of series) {
      const v = valueOf(s.buckets[i]);
      if (!(v > 0)) continue;
      const height = Math.max(1, y(base) - y(base + v)); // a sliver stays visible
      const attrs = { class: "bar", x: x(i) + gap / 2, y: y(base) - height, width: Math.max(0.5, band - gap), height };
      svg("rect", { ...attrs, fill: s.color }, marks);
      base += v;
    }
  });
  hoverLayer(chart, win, (i) => [
    ...series
      .filter((s) => valueOf(s.buckets[i]) > 0)
      .map((s) => ({ color: s.color, label: s.label, value: formatValue(valueOf(s.buckets[i])) })),
    { label: "Total", value: formatValue(totals[i]), strong: true },
  ]);
}

/** One line per series; a bucket without data breaks the line, a lone point is a dot. */
export function lines(container, win, series, valueOf, { formatValue, formatTick }) {
  const values = series.map((s) => s.buckets.map(valueOf));
  const present = values.flat().filter((v) => v !== null);
  if (!present.length) return emptyPlot(container);
  const chart = frame(container, win, Math.max(...present), formatTick, false);
  const { root, x, y, band } = chart;
  const marks = svg("g", { class: "marks" }, root);
  const dots = win.buckets.length <= 48;
  const baseline = y(0).toFixed(1);
  series.forEach((s, si) => {
    const runs = [];
    values[si].forEach((v, i) => {
      if (v === null) return;
      const point = [(x(i) + band / 2).toFixed(1), y(v).toFixed(1)];
      if (i > 0 && values[si][i - 1] !== null) runs[runs.length - 1].push(point);
      else runs.push([point]);
    });
    for (const run of runs) {
      const d = run.map(([px, py], j) => `${j ? "L" : "M"}${px},${py}`).join("");
      if (run.length > 1) {
        if (s.area) {
          const area = `${d}L${run.at(-1)[0]},${baseline}L${run[0][0]},${baseline}Z`;
          svg("path", { class: "area", d: area, fill: s.color }, marks);
        }
        svg("path", { class: "line", d, stroke: s.color }, marks);
      }
      if (dots || run.length === 1) {
        const r = run.length === 1 ? 4 : 3;
        for (const [cx, cy] of run) svg("circle", { class: "dot", cx, cy, r, fill: s.color }, marks);
      }
    }
  });
  hoverLayer(chart, win, (i) =>
    series
      .map((s, si) => ({ color: s.color, label: s.label, value: values[si][i] }))
      .filter((row) => row.value !== null)
      .map((row) => ({ ...row, value: formatValue(row.value) })),
  );
}

export function legend(list, series) {
  list.replaceChildren(
    ...series.map((s) => {
      const item = el("li");
      item.append(swatch(s.color), el("span", {}, s.label));
      return item;
    }),
  );
}

function showTooltip(event, title, rows) {
  const tip = $("#tooltip");
  const items = rows.map((row) => {
    const line = el("div", { class: row.strong ? "tip-row strong" : "tip-row" });
    line.append(row.color ? swatch(row.color) : el("span", { class: "swatch blank" }));
    line.append(el("span", { class: "tip-label" }, row.label), el("span", { class: "tip-value" }, row.value));
    return line;
  });
  tip.replaceChildren(el("div", { class: "tip-title" }, title), ...items);
  tip.hidden = false;
  moveTooltip(event);
}

function moveTooltip(event) {
  const tip = $("#tooltip");
  const pad = 14;
  const { width, height } = tip.getBoundingClientRect();
  let left = event.clientX + pad;
  let top = event.clientY + pad;
  if (left + width > window.innerWidth - 8) left = event.clientX - pad - width;
  if (top + height > window.innerHeight - 8) top = event.clientY - pad - height;
  tip.style.left = `${Math.max(8, left)}px`;
  tip.style.top = `${Math.max(8, top)}px`;
}

function hideTooltip() {
  $("#tooltip").hidden = true;
}
