// Small DOM helpers. Data from the store is only ever set as text, never parsed as HTML.

import { RawNumber, stringify } from './api.js';

// h('a', {href: '#/x', class: 'link', onclick: fn}, 'text', childNode, [more, children])
export function h(tag, attrs = {}, ...children) {
  const el = tag.startsWith('svg:')
    ? document.createElementNS('http://www.w3.org/2000/svg', tag.slice(4))
    : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : v);
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c == null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : String(c));
  }
}

export const $ = (sel, root = document) => root.querySelector(sel);


// "Nov 26 10:40:51" with the exact UTC timestamp kept for the title and screen readers' datetime.
export function time(iso) {
  const d = new Date(iso);
  const pad = (n, w = 2) => String(n).padStart(w, '0');
  const clock = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  const today = new Date().toDateString() === d.toDateString();
  const day = today ? '' : d.toLocaleDateString(undefined, { month: 'short', day: 'numeric', year: 'numeric' }) + ' ';
  return h('time', { datetime: iso, title: iso }, day + clock);
}

// Positions go up to 2^63 - 1, past what a JavaScript number holds: an exact integer kept as
// source text (see RawNumber) is grouped as a BigInt, digit for digit.
export const number = (n) => (n instanceof RawNumber && /^-?[0-9]+$/.test(n.source) ? BigInt(n.source) : Number(n)).toLocaleString('en-US');

// "just now", "12 s ago", "4 min ago", "3 h ago", "2 d ago": how long since an RFC 3339 time.
export function ago(iso) {
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (!Number.isFinite(s)) return '';
  if (s < 2) return 'just now';
  if (s < 90) return `${Math.round(s)} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  if (s < 129600) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

export function preview(value, max = 140) {
  const text = stringify(value);
  return text.length > max ? text.slice(0, max - 1) + '…' : text;
}

export const shortId = (id) => id.slice(0, 8) + '…' + id.slice(-4);

// Clipboard: the async API needs a secure context (https or localhost); fall back to a selection.
export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    const area = h('textarea', { class: 'offscreen', 'aria-hidden': 'true' });
    area.value = text;
    document.body.append(area);
    area.select();
    const ok = document.execCommand('copy');
    area.remove();
    return ok;
  }
}

// A copy button that says "Copied" for a moment (and tells screen readers through the live region).
export function copyButton(label, getText, describe = label) {
  const button = h('button', { type: 'button', class: 'copy', 'aria-label': `Copy ${describe}` }, label);
  button.addEventListener('click', async () => {
    const ok = await copyText(getText());
    button.textContent = ok ? 'Copied' : 'Copy failed';
    announce(ok ? `${describe} copied` : 'Copy failed');
    setTimeout(() => { button.textContent = label; }, 1200);
  });
  return button;
}

// One polite live region for short announcements (copies, navigation results).
export function announce(message) {
  const region = $('#announcer');
  if (!region) return;
  region.textContent = '';
  setTimeout(() => { region.textContent = message; }, 30);
}

// Whether a key press is meant for a text field rather than for the page's shortcuts.
export const typing = (e) => e.target.closest?.('input, textarea, select, [contenteditable]') != null;
