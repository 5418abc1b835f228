// The events of the scope in view, a page at a time, oldest or newest first.
// Oldest first is the API's own order: each page costs one request, whatever the scope's size.
// Newest first needs the scope's end, found once per session by skipping forward (see scan.js).

import { explain, read } from './api.js';
import { h, number, preview, shortId, time } from './dom.js';
import { withParams } from './route.js';
import { indexOf } from './scan.js';

const PAGE = 100;

// One table row; `depth` hides the columns the scope already fixes (entity, type).
function eventRow(ev, route, depth) {
  const href = withParams(route, { event: ev.event_id });
  return h('tr', { 'data-id': ev.event_id },
    h('td', { class: 'c-version num' }, String(ev.version)),
    h('td', { class: 'c-time' }, time(ev.timestamp)),
    depth < 4 ? h('td', { class: 'c-type' }, h('span', { class: 'tag' }, ev.type)) : null,
    depth < 3 ? h('td', { class: 'c-entity' }, ev.entity) : null,
    h('td', { class: 'c-id' }, h('a', { href, class: 'mono', 'aria-label': `Open event ${ev.event_id} (${ev.type}, version ${ev.version})` }, shortId(ev.event_id))),
    h('td', { class: 'c-data mono' }, preview(ev.event)));
}

function eventTable(depth, caption) {
  const head = h('tr', {},
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

export function renderEvents(section, route, signal) {
  const { names, params } = route;
  const depth = names.length;
  const newest = params.get('order') === 'newest';
  const type = depth < 4 ? params.get('type') || '' : '';
  const { table, body } = eventTable(depth, `Events of ${names.join(' / ')}, ${newest ? 'newest' : 'oldest'} first`);
  const status = h('p', { class: 'list-status', role: 'status' });
  const more = h('button', { type: 'button', class: 'more', hidden: true }, newest ? 'Show older' : 'Load more');
  const empty = h('p', { class: 'empty', hidden: true });

  const orderSwitch = h('div', { class: 'segmented', role: 'group', 'aria-label': 'Order' },
    ...[['oldest', 'Oldest first'], ['newest', 'Newest first']].map(([value, label]) => h('a', {
      href: withParams(route, { order: value === 'newest' ? 'newest' : null, after: null, event: null }),
      'aria-current': (value === 'newest') === newest ? 'true' : null, class: 'seg',
    }, label)));
  const typeInput = h('input', { id: 'type-filter', name: 'type', value: type, placeholder: 'any type', autocomplete: 'off', spellcheck: 'false' });
  const typeForm = depth < 4 ? h('form', { class: 'type-filter', role: 'search', 'aria-label': 'Only events of one type' },
    h('label', { for: 'type-filter' }, 'Type'), typeInput,
    h('button', { type: 'submit' }, 'Apply'),
    type ? h('a', { href: withParams(route, { type: null, after: null }), class: 'clear-filter' }, 'Clear') : null) : null;
  typeForm?.addEventListener('submit', (e) => {
    e.preventDefault();
    location.hash = withParams(route, { type: typeInput.value.trim() || null, after: null, event: null });
  });

  const after = params.get('after');
  section.replaceChildren(...[
    h('div', { class: 'section-head' },
      h('h2', { id: 'events-title' }, 'Events'),
      h('span', { class: 'count', id: 'events-count' }),
      h('div', { class: 'toolbar' }, orderSwitch, typeForm)),
    after && !newest ? h('p', { class: 'note' }, `Starting after event ${after}. `, h('a', { href: withParams(route, { after: null }) }, 'From the start')) : null,
    h('div', { class: 'table-wrap' }, table), empty, h('div', { class: 'list-foot' }, more, status)].filter(Boolean));

  // The total, once anything (this list or the live tail) has read to the end of the scope.
  const index = indexOf(names, type);
  const count = () => { section.querySelector('#events-count').textContent = `${number(index.total)} in all`; };
  if (index.atEnd) count();
  index.addEventListener('end', count, { signal });
  index.addEventListener('grow', count, { signal });

  const rows = (events) => { for (const ev of events) body.append(eventRow(ev, route, depth)); };
  const done = () => {
    const shown = body.rows.length;
    status.textContent = shown ? `${number(shown)} event${shown === 1 ? '' : 's'} shown${more.hidden ? '' : ', more to load'}` : '';
    if (!shown) {
      empty.hidden = false;
      empty.textContent = type ? `No events of type “${type}” here.` : 'No events here yet.';
    }
  };
  const fail = (e) => {
    if (e.name === 'AbortError') return;
    status.textContent = explain(e);
    more.disabled = false;
  };

  if (!newest) {
    let following = after || null;
    const load = async () => {
      more.disabled = true;
      try {
        const page = await read(names, { following, limit: PAGE, type, signal });
        rows(page.events);
        following = page.next;
        more.hidden = !page.next;
        more.disabled = false;
        done();
      } catch (e) { fail(e); }
    };
    more.addEventListener('click', load);
    load();
    return;
  }

  // Newest first: find the end (cheap for small scopes; shows progress for big ones), then read
  // the known chunks backwards.
  let pager = null;
  const load = async () => {
    more.disabled = true;
    try {
      if (!pager) {
        status.textContent = 'Finding the newest events…';
        await index.extend({ signal, onProgress: (n) => { status.textContent = `Finding the newest events: ${number(n)} read so far…`; } });
        pager = index.backwards();
      }
      rows(await pager.next(PAGE, signal));
      more.hidden = !pager.more;
      more.disabled = false;
      done();
    } catch (e) { fail(e); }
  };
  more.addEventListener('click', load);
  load();
}
