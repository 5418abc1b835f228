// One event, in a dialog over the list (so closing it returns to the same place in the list):
// its ids, version and time, and its `event` and `meta` as collapsible JSON, with copy buttons.
// The dialog is modal: focus stays inside, Escape closes it, and focus returns where it was.

import { explain, findEvent, getEvent, stringify } from './api.js';
import { $, copyButton, h, time } from './dom.js';
import { format } from './route.js';
import { jsonTree, setAllOpen } from './jsonview.js';

let abort = null;

// domain: null when the address does not say it (the event is then looked up in the realm).
export function showEvent(realm, domain, id, onClose) {
  const dialog = $('#event-dialog');
  abort?.abort();
  abort = new AbortController();
  const body = $('#event-body', dialog);
  $('#event-title', dialog).textContent = 'Event';
  body.replaceChildren(h('p', { class: 'muted' }, 'Loading…'));
  dialog.onclose = () => { abort?.abort(); onClose(); };
  if (!dialog.open) dialog.showModal();
  (domain == null ? findEvent(realm, id, abort.signal) : getEvent(realm, domain, id, abort.signal)).then((ev) => fill(dialog, body, ev), (e) => {
    if (e.name === 'AbortError') return;
    body.replaceChildren(h('p', { class: 'error', role: 'alert' }, explain(e)));
  });
}

export function closeEvent() {
  const dialog = $('#event-dialog');
  if (dialog.open) { dialog.onclose = null; dialog.close(); }
  abort?.abort();
}

function fill(dialog, body, ev) {
  $('#event-title', dialog).textContent = `${ev.type} · version ${ev.version}`;
  const scope = (n) => format([ev.realm, ev.domain, ev.entity, ev.type].slice(0, n));
  const link = location.href.split('#')[0] + format([ev.realm, ev.domain], { event: ev.event_id });
  const fact = (label, ...value) => [h('dt', {}, label), h('dd', {}, ...value)];
  body.replaceChildren(
    h('dl', { class: 'facts' },
      fact('Event id', h('code', { class: 'mono' }, ev.event_id), copyButton('Copy', () => ev.event_id, 'event id')),
      fact('Time', time(ev.timestamp), h('span', { class: 'muted mono small' }, ev.timestamp)),
      fact('Version', String(ev.version), h('span', { class: 'muted' }, ` of entity ${ev.entity}`)),
      fact('Position', String(ev.position), h('span', { class: 'muted' }, ` in realm ${ev.realm}`)),
      fact('Where',
        h('nav', { class: 'crumbs small', 'aria-label': 'Where this event is' },
          h('a', { href: scope(1) }, ev.realm), ' / ', h('a', { href: scope(2) }, ev.domain), ' / ',
          h('a', { href: scope(3) }, ev.entity), ' / ', h('a', { href: scope(4) }, ev.type))),
      fact('Context',
        h('a', { href: format([ev.realm, ev.domain, ev.entity], { order: 'oldest', after: ev.event_id }) }, 'Later events of this entity'), ' · ',
        h('a', { href: format([ev.realm, ev.domain], { order: 'oldest', after: ev.event_id }) }, 'later in the domain'), ' · ',
        h('a', { href: format([ev.realm, ev.domain], { order: 'newest', before: ev.event_id }) }, 'earlier in the domain'))),
    jsonSection('Event', 'event', ev.event),
    jsonSection('Meta', 'meta', ev.meta),
    h('div', { class: 'dialog-actions' },
      copyButton('Copy link', () => link, 'link to this event'),
      copyButton('Copy whole event', () => stringify(ev, 2), 'whole event as JSON')));
}

function jsonSection(title, key, value) {
  const tree = jsonTree(value, { open: 3, label: `${title} JSON` });
  const id = `json-${key}`;
  return h('section', { class: 'json-section', 'aria-labelledby': id },
    h('div', { class: 'json-head' },
      h('h3', { id }, title),
      h('div', { class: 'toolbar' },
        h('button', { type: 'button', class: 'quiet', onclick: () => setAllOpen(tree, true) }, 'Expand all'),
        h('button', { type: 'button', class: 'quiet', onclick: () => setAllOpen(tree, false) }, 'Collapse'),
        copyButton('Copy', () => stringify(value, 2), `${title.toLowerCase()} JSON`))),
    tree);
}
