// The events of the scope in view, a page at a time, newest or oldest first, of any of the chosen
// types. Either order costs one request a page, whatever the scope's size: newest first is the
// API's order=desc, and "Load more" / "Show older" pass the page's `next` as `following`.

import { EventNotEntity, explain, keys, read } from './api.js';
import { h, number, preview, shortId, time } from './dom.js';
import { eventHref, NO_EVENT, orderOf, typesOf, withParams } from './route.js';

const PAGE = 100;

// One table row; `depth` hides the columns the scope already fixes (entity, type).
function eventRow(ev, route, depth) {
  const href = eventHref(route, ev);
  return h('tr', { 'data-id': ev.event_id },
    h('td', { class: 'c-position num', title: 'Position in the realm' }, number(ev.position)),
    h('td', { class: 'c-version num' }, String(ev.version)),
    h('td', { class: 'c-time' }, time(ev.timestamp)),
    depth < 4 ? h('td', { class: 'c-type' }, h('span', { class: 'tag' }, ev.type)) : null,
    depth < 3 ? h('td', { class: 'c-entity' }, ev.entity) : null,
    h('td', { class: 'c-id' }, h('a', { href, class: 'mono', 'aria-label': `Open event ${ev.event_id} (${ev.type}, version ${ev.version}, position ${ev.position})` }, shortId(ev.event_id))),
    h('td', { class: 'c-data mono' }, preview(ev.event)));
}

function eventTable(depth, caption) {
  const head = h('tr', {},
    h('th', { scope: 'col', class: 'c-position num', title: 'Position in the realm' }, 'Position'),
    h('th', { scope: 'col', class: 'c-version num' }, 'Version'),
    h('th', { scope: 'col', class: 'c-time' }, 'Time'),
    depth < 4 ? h('th', { scope: 'col', class: 'c-type' }, 'Type') : null,
    depth < 3 ? h('th', { scope: 'col', class: 'c-entity' }, 'Entity') : null,
    h('th', { scope: 'col', class: 'c-id' }, 'Event id'),
    h('th', { scope: 'col', class: 'c-data' }, 'Data'));
  const body = h('tbody');
  const table = h('table', { class: 'events' }, h('caption', { class: 'sr-only' }, caption), h('thead', {}, head), body);
  // A click anywhere on a row opens it, like its link (which is what keyboards use).
  body.addEventListener('click', (e) => {
    const row = e.target.closest('tr');
    if (row && !e.target.closest('a') && !getSelection().toString()) row.querySelector('a')?.click();
  });
  return { table, body };
}

// The chosen types as removable chips, and a field to add one (any name: no separators to split on).
function typeFilter(route, types, signal) {
  const depth = route.names.length;
  const input = h('input', { id: 'type-filter', name: 'type', placeholder: types.length ? 'or also…' : 'any type', autocomplete: 'off', spellcheck: 'false', list: depth === 3 ? 'type-suggestions' : null });
  const chips = types.map((t) => h('li', { class: 'chip' }, h('span', { class: 'tag' }, t),
    h('a', { href: withParams(route, { type: types.filter((x) => x !== t), after: null, before: null, ...NO_EVENT }), class: 'chip-remove', 'aria-label': `Remove type ${t}`, title: `Show events of any type but those listed` }, '×')));
  const form = h('form', { class: 'type-filter', role: 'search', 'aria-label': 'Only events of these types' },
    h('label', { for: 'type-filter' }, 'Types'),
    chips.length ? h('ul', { class: 'chips', 'aria-label': 'Showing events of any of these types' }, chips) : null,
    input,
    h('button', { type: 'submit' }, 'Add'),
    types.length ? h('a', { href: withParams(route, { type: null, after: null, before: null, ...NO_EVENT }), class: 'clear-filter' }, 'All types') : null);
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const added = input.value; // not trimmed: " paid" is a name of its own, as the server keeps it
    if (!added || types.includes(added)) { input.value = ''; return; }
    location.hash = withParams(route, { type: [...types, added], after: null, before: null, ...NO_EVENT });
  });
  if (depth === 3) {
    // An entity's types are one cheap keys request away: offer them as suggestions.
    const options = h('datalist', { id: 'type-suggestions' });
    form.append(options);
    keys(route.names, { limit: 200, signal }).then(
      (page) => options.replaceChildren(...page.keys.filter((k) => !types.includes(k)).map((k) => h('option', { value: k }))),
      () => {}); // suggestions only: the list itself reports errors
  }
  return form;
}

export function renderEvents(section, route, head, signal) {
  const { names, params } = route;
  const depth = names.length;
  const newest = orderOf(route) === 'newest';
  const types = typesOf(route);
  const { table, body } = eventTable(depth, `Events of ${names.join(' / ')}, ${newest ? 'newest' : 'oldest'} first`);
  const status = h('p', { class: 'list-status', role: 'status' });
  const more = h('button', { type: 'button', class: 'more', hidden: true }, newest ? 'Show older' : 'Load more');
  const empty = h('p', { class: 'empty', hidden: true });

  const orderSwitch = h('div', { class: 'segmented', role: 'group', 'aria-label': 'Order' },
    ...[['newest', 'Newest first'], ['oldest', 'Oldest first']].map(([value, label]) => h('a', {
      href: withParams(route, { order: value, after: null, before: null, ...NO_EVENT }),
      'aria-current': (value === 'newest') === newest ? 'true' : null, class: 'seg',
    }, label)));

  // Where the list starts: after an event (oldest first) or before one (newest first).
  const start = newest ? params.get('before') : params.get('after');
  const startNote = start ? h('p', { class: 'note' },
    `Starting ${newest ? 'before' : 'after'} event ${start}. `,
    h('a', { href: withParams(route, { after: null, before: null, ...NO_EVENT }) }, newest ? 'From the newest' : 'From the start')) : null;
  section.replaceChildren(...[
    h('div', { class: 'section-head' },
      h('h2', { id: 'events-title' }, 'Events'),
      h('span', { class: 'count', id: 'events-count' }),
      h('div', { class: 'toolbar' }, orderSwitch, depth < 4 ? typeFilter(route, types, signal) : null)),
    startNote,
    h('div', { class: 'table-wrap' }, table), empty, h('div', { class: 'list-foot' }, more, status)].filter(Boolean));

  // How far the scope goes: an entity's event count is its newest version + 1; elsewhere the
  // newest event's position (positions are the realm's, so they count nothing else exactly).
  const count = () => {
    const ev = head.event;
    const text = !ev ? '' : depth === 3 && !types.length ? `${number(ev.version + 1)} in all`
      : `newest at position ${number(ev.position)}`;
    section.querySelector('#events-count').textContent = text;
  };
  head.addEventListener('change', count, { signal });
  // A list read while the scope had no events says "No events here yet": once one is in (an
  // append through the form on this page, say), the list is read again rather than contradict the
  // count beside it. (Of any type only: a type filter may still match none.)
  head.addEventListener('change', () => {
    if (head.event && !types.length && !body.rows.length && !empty.hidden && !following) {
      empty.hidden = true;
      load();
    }
  }, { signal });
  head.load(signal).catch(() => {}); // the list's own read reports errors

  const done = () => {
    const shown = body.rows.length;
    status.textContent = shown ? `${number(shown)} event${shown === 1 ? '' : 's'} shown${more.hidden ? '' : ', more to load'}` : '';
    empty.hidden = Boolean(shown);
    if (!shown) {
      empty.textContent = types.length ? `No events of type ${types.map((t) => `“${t}”`).join(' or ')} here.` : 'No events here yet.';
    }
  };
  // While a page loads, the button stays enabled (Chromium drops the focus of a button that gets
  // disabled, so a second Enter would do nothing) but busy: activations are ignored until it ends.
  let following = start || null;
  const load = async () => {
    if (more.getAttribute('aria-busy') === 'true') return;
    more.setAttribute('aria-busy', 'true');
    const first = body.rows.length;
    try {
      const page = await read(names, { following, limit: PAGE, types, newest, signal });
      for (const ev of page.events) body.append(eventRow(ev, route, depth));
      following = page.next;
      // The last page: the focus goes from the button, now hidden, to the first row it loaded (the last row, if none).
      if (!page.next && document.activeElement === more) (body.rows[first] ?? body.rows[first - 1])?.querySelector('a')?.focus();
      more.hidden = !page.next;
      done();
    } catch (e) {
      if (e.name === 'AbortError') return;
      status.replaceChildren(explain(e));
      // The API answered the event this entity is named after: offer it rather than a dead end.
      if (e instanceof EventNotEntity) status.append(' ', h('a', { href: eventHref(route, e.event) }, 'Open that event'));
    } finally {
      more.removeAttribute('aria-busy');
    }
  };
  more.addEventListener('click', load);
  load();
}
