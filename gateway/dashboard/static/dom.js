// Building DOM and SVG nodes. Data only ever goes in through textContent and attributes,
// and styles only through the CSSOM, which the page's Content-Security-Policy allows.

const SVG_NS = "http://www.w3.org/2000/svg";

export const $ = (selector) => document.querySelector(selector);

export function el(name, attrs = {}, text = null) {
  const node = document.createElement(name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== null) node.textContent = text;
  return node;
}

export function svg(name, attrs = {}, parent = null) {
  const node = document.createElementNS(SVG_NS, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (parent) parent.appendChild(node);
  return node;
}

export function swatch(color) {
  const node = el("span", { class: "swatch" });
  node.style.backgroundColor = color;
  return node;
}
