// A collapsible, pretty-printed JSON tree. Objects and arrays are <details> elements, so they open
// and close with the mouse, Enter or Space, and screen readers announce them as expandable.
// Children are built when a node first opens, and long arrays show 200 items at a time, so a
// large event costs nothing until someone looks inside it.

import { RawNumber } from './api.js';
import { h } from './dom.js';

const SLICE = 200;
const builders = new WeakMap(); // <details> -> function that fills it on first open

export function jsonTree(value, { open = 2, label } = {}) {
  const root = h('div', { class: 'json', role: 'group', 'aria-label': label });
  root.append(node(value, undefined, 0, open, true));
  return root;
}

function node(value, key, depth, openDepth, last) {
  const keyPart = key === undefined ? [] : [h('span', { class: 'jv-key' }, typeof key === 'number' ? '' : JSON.stringify(key)), typeof key === 'number' ? '' : ': '];
  const comma = last ? '' : ',';
  if (value === null || typeof value !== 'object' || value instanceof RawNumber) {
    return h('div', { class: 'jv-row' }, keyPart, leaf(value), comma);
  }
  const array = Array.isArray(value);
  const entries = array ? value.map((v, i) => [i, v]) : Object.entries(value);
  const [open, close] = array ? ['[', ']'] : ['{', '}'];
  if (!entries.length) return h('div', { class: 'jv-row' }, keyPart, h('span', { class: 'jv-punct' }, open + close), comma);
  const count = `${entries.length} ${array ? (entries.length === 1 ? 'item' : 'items') : (entries.length === 1 ? 'key' : 'keys')}`;
  const details = h('details', { class: 'jv' },
    h('summary', { 'data-close': close + comma }, keyPart, h('span', { class: 'jv-punct' }, open), h('span', { class: 'jv-count' }, count)));
  const body = h('div', { class: 'jv-body' });
  details.append(body, h('div', { class: 'jv-close' }, close + comma));
  let shown = 0;
  const more = () => {
    body.querySelector(':scope > .jv-more')?.remove();
    const end = Math.min(entries.length, shown + SLICE);
    for (; shown < end; shown++) {
      const [k, v] = entries[shown];
      body.append(node(v, array ? shown : k, depth + 1, openDepth, shown === entries.length - 1));
    }
    if (shown < entries.length) {
      body.append(h('button', { type: 'button', class: 'jv-more link', onclick: more }, `show ${Math.min(SLICE, entries.length - shown)} more of ${entries.length - shown}`));
    }
  };
  builders.set(details, more);
  details.addEventListener('toggle', () => { if (details.open) build(details); });
  if (depth < openDepth) { details.open = true; build(details); }
  return details;
}

function build(details) {
  const fill = builders.get(details);
  if (fill) { builders.delete(details); fill(); }
}

function leaf(value) {
  if (value instanceof RawNumber) return h('span', { class: 'jv-num' }, value.source);
  if (typeof value === 'string') return h('span', { class: 'jv-str' }, JSON.stringify(value));
  if (typeof value === 'number') return h('span', { class: 'jv-num' }, String(value));
  if (typeof value === 'boolean') return h('span', { class: 'jv-bool' }, String(value));
  return h('span', { class: 'jv-null' }, 'null');
}

// Open (or close) every node under root; opening stops after `limit` nodes to keep the page fast.
export function setAllOpen(root, open, limit = 2000) {
  // Collapsing keeps the outermost node open, so its keys stay in view.
  if (!open) { root.querySelectorAll('details.jv details.jv').forEach((d) => { d.open = false; }); return; }
  let opened = 0;
  for (;;) {
    const closed = [...root.querySelectorAll('details.jv:not([open])')];
    if (!closed.length || opened >= limit) return;
    for (const d of closed) { d.open = true; build(d); opened++; }
  }
}
