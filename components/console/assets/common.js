// Shared by the console and the demo: fetch helpers, money formatting and hand-drawn SVG charts.

export const $ = (sel, root = document) => root.querySelector(sel);

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') node.className = v;
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else if (k === 'text') node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const c of children.flat()) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

export { yuan } from './i18n.js';
export const pct = (bp) => (bp === null || bp === undefined) ? '-' : `${(Number(bp) / 100).toFixed(1)}%`;

/// Calls the API; resolves to {status, body} (problem+json bodies included), never throws on HTTP errors.
export async function api(method, path, { token, body, headers = {} } = {}) {
  const h = { ...headers };
  if (token) h.authorization = `Bearer ${token}`;
  if (body !== undefined && typeof body !== 'string') { h['content-type'] = 'application/json'; body = JSON.stringify(body); }
  else if (body !== undefined) h['content-type'] = 'application/json';
  const res = await fetch(path, { method, headers: h, body });
  const text = await res.text();
  let parsed = null;
  try { parsed = text ? JSON.parse(text) : null; } catch { parsed = text; }
  return { status: res.status, body: parsed };
}

export const newKey = () => `k-${Date.now()}-${Math.random().toString(36).slice(2, 10)}`;

const SVG = 'http://www.w3.org/2000/svg';
function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

/// Horizontal bars: [{label, value, note?}] scaled to the largest value.
export function barChart(rows, { width = 520, color = '#1f6feb' } = {}) {
  const rowH = 28, labelW = 120, noteW = 110;
  const max = Math.max(1, ...rows.map((r) => Number(r.value) || 0));
  const chart = svg('svg', { width, height: rows.length * rowH + 8, role: 'img', viewBox: `0 0 ${width} ${rows.length * rowH + 8}` });
  rows.forEach((r, i) => {
    const y = i * rowH + 4;
    const w = Math.round(((Number(r.value) || 0) / max) * (width - labelW - noteW));
    const label = svg('text', { x: 0, y: y + 17 }); label.textContent = r.label; chart.append(label);
    chart.append(svg('rect', { x: labelW, y, width: Math.max(w, 1), height: rowH - 8, rx: 3, fill: color }));
    const value = svg('text', { x: labelW + w + 6, y: y + 17 });
    value.textContent = r.note ? `${r.value} · ${r.note}` : String(r.value);
    chart.append(value);
  });
  return chart;
}

export function progress(fraction) {
  const bar = el('div', { class: 'progress' });
  const fill = el('div');
  fill.style.width = `${Math.max(0, Math.min(100, fraction * 100)).toFixed(1)}%`;
  bar.append(fill);
  return bar;
}

export function table(headers, rows) {
  return el('table', {},
    el('thead', {}, el('tr', {}, headers.map((h) => el('th', { class: h.num ? 'num' : '' }, h.label ?? h)))),
    el('tbody', {}, rows.map((r) => el('tr', {}, r.map((c, i) => el('td', { class: headers[i]?.num ? 'num' : '' }, c ?? '-'))))));
}
