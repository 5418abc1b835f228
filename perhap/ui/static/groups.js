// Consumer groups: the groups of a realm (#/_groups/{realm}) and one group
// (#/_groups/{realm}/{group}): how far each has got (lag, in flight, parked, checkpoint and head),
// its consumers and when each was last seen, and a group's parked events, which can be replayed.
// Both views ask again every few seconds while the tab is visible. No realm name starts with '_',
// so these addresses never clash with a realm's.

import { explain, group, groups, parked, replayParked, stringify } from './api.js';
import { ago, announce, h, number, preview, shortId, time } from './dom.js';
import { format, GROUPS } from './route.js';

const REFRESH = 5000; // ms between refreshes
const MAX_PARKED_ROWS = 500; // parked events read and shown; "Replay all" still replays every one
const MAX_CONSUMERS_LISTED = 5; // per group in the list; the group's own page lists them all

// names: [] (no realm chosen), [realm] or [realm, group]. Returns a function that refreshes the
// page now (a token was given), or nothing when there is nothing to ask.
export function renderGroupsView(main, names, signal) {
  const [realm, name] = names;
  const crumbs = h('nav', { class: 'crumbs', 'aria-label': 'Breadcrumb' }, h('ol', {},
    h('li', {}, h('a', { href: '#/' }, 'All realms')),
    realm != null ? h('li', {}, h('a', { href: format([realm]), title: `realm ${realm}` }, realm)) : null,
    h('li', {}, h('a', { href: format(realm != null ? [GROUPS, realm] : [GROUPS]), 'aria-current': name == null ? 'page' : null }, 'Consumer groups')),
    name != null ? h('li', {}, h('a', { href: format([GROUPS, realm, name]), 'aria-current': 'page', title: `group ${name}` }, name)) : null));
  if (realm == null) {
    document.title = 'Consumer groups · perhap';
    main.replaceChildren(crumbs, h('header', { class: 'page-head' }, h('h1', {}, 'Consumer groups')),
      h('p', { class: 'lede' }, 'Consumer groups belong to a realm: open a realm on the left, then its “Consumer groups” link.'));
    return;
  }
  return name == null ? renderList(main, crumbs, realm, signal) : renderGroup(main, crumbs, realm, name, signal);
}

// ---------------------------------------------------------------- refreshing

// Runs load() now and then every REFRESH ms until signal aborts, never two at once; skipped while
// the tab is hidden, and run as soon as it shows again. Returns a function that refreshes now
// (after the load in progress, if there is one, so what it shows is never older than the call).
function poll(signal, load) {
  let timer = null;
  let running = false;
  let again = false;
  const run = async () => {
    clearTimeout(timer);
    timer = null;
    if (signal.aborted) return;
    if (running) { again = true; return; }
    running = true;
    try { if (!document.hidden) await load(); } catch { /* load reports its own errors */ } finally { running = false; }
    if (signal.aborted) return;
    if (again) { again = false; run(); return; }
    timer = setTimeout(run, REFRESH);
  };
  document.addEventListener('visibilitychange', () => { if (!document.hidden && !running) run(); }, { signal });
  signal.addEventListener('abort', () => clearTimeout(timer));
  run();
  return run;
}

// "Updated 10:40:51 · every 5 s", or why the last refresh failed (the figures shown stay).
function freshness() {
  const line = h('p', { class: 'list-status refreshed', role: 'status' }, 'Loading…');
  return {
    line,
    ok: () => line.replaceChildren('Updated ', time(new Date().toISOString()), ` · every ${REFRESH / 1000} s`),
    failed: (e, shown) => { line.textContent = (shown ? 'Could not refresh: ' : '') + explain(e); },
  };
}

// A table rebuilt by a refresh keeps the keyboard where it was: the element with the same
// data-focus key gets focus back.
function keepFocus(root, rebuild) {
  const key = root.contains(document.activeElement) ? document.activeElement.dataset.focus : null;
  rebuild();
  if (key) [...root.querySelectorAll('[data-focus]')].find((el) => el.dataset.focus === key)?.focus();
}

// ---------------------------------------------------------------- shared pieces

// The group's scope: its domain (or the whole realm) and its types (or every type), linked to the
// events it covers.
function scopeOf(realm, g) {
  const where = g.domain == null ? [realm] : [realm, g.domain];
  return h('span', { class: 'scope' },
    h('a', { href: format(where, { type: g.types ?? [] }), title: 'Events of this scope' },
      g.domain == null ? 'whole realm' : `domain ${g.domain}`),
    g.types == null ? h('span', { class: 'muted' }, ' · every type')
      : [' · ', h('span', { class: 'tags' }, g.types.map((t) => h('span', { class: 'tag' }, t)))]);
}

// A count that is good at 0 and worth a look above it.
const gauge = (n, kind) => h('span', { class: 'gauge', 'data-state': Number(n) > 0 ? kind : 'ok' }, number(n));

const consumerLine = (c) => h('li', {},
  h('span', { class: 'mono consumer' }, c.consumer),
  h('span', { class: 'muted' }, ` · ${number(c.in_flight)} in flight · seen `),
  h('span', { class: 'muted', title: c.last_seen }, ago(c.last_seen)));

// ---------------------------------------------------------------- the realm's groups

function renderList(main, crumbs, realm, signal) {
  document.title = `Consumer groups of ${realm} · perhap`;
  const status = freshness();
  const body = h('tbody');
  const table = h('table', { class: 'groups' },
    h('caption', { class: 'sr-only' }, `Consumer groups of realm ${realm}`),
    h('thead', {}, h('tr', {},
      h('th', { scope: 'col' }, 'Group'),
      h('th', { scope: 'col' }, 'Scope'),
      h('th', { scope: 'col', class: 'num', title: 'Events of the scope not yet acknowledged or parked' }, 'Lag'),
      h('th', { scope: 'col', class: 'num', title: 'Leased to a consumer, not yet acknowledged' }, 'In flight'),
      h('th', { scope: 'col', class: 'num' }, 'Parked'),
      h('th', { scope: 'col', class: 'num', title: 'Everything up to the checkpoint is acknowledged or parked; the head is the newest event of the scope' }, 'Checkpoint / head'),
      h('th', { scope: 'col' }, 'Consumers'))),
    body);
  const empty = h('div', { class: 'empty', hidden: true },
    h('p', {}, `No consumer groups in ${realm} yet.`),
    h('p', { class: 'small' }, 'A group is made with ', h('code', {}, `PUT /_groups/${realm}/NAME`),
      ' (or ', h('code', {}, 'perhap group create'), '); its consumers then share the events of its scope.'));
  const count = h('span', { class: 'count' });
  main.replaceChildren(crumbs,
    h('header', { class: 'page-head' },
      h('p', { class: 'kind' }, 'realm'), h('h1', {}, `Consumer groups of ${realm}`),
      h('p', { class: 'lede' }, 'Each group shares the events of its scope among its consumers, at least once, each ',
        'entity in order. Lag counts the events not yet acknowledged or parked.')),
    h('section', { class: 'card', 'aria-labelledby': 'groups-title' },
      h('div', { class: 'section-head' }, h('h2', { id: 'groups-title' }, 'Groups'), count),
      h('div', { class: 'table-wrap' }, table), empty,
      h('div', { class: 'list-foot' }, status.line)));
  announce(`Consumer groups of realm ${realm}`);

  let shown = false;
  return poll(signal, async () => {
    try {
      const { groups: list } = await groups(realm, signal);
      keepFocus(body, () => body.replaceChildren(...list.map((g) => groupRow(realm, g))));
      empty.hidden = list.length > 0;
      table.hidden = list.length === 0;
      count.textContent = `${number(list.length)} group${list.length === 1 ? '' : 's'}`;
      shown = true;
      status.ok();
    } catch (e) {
      if (e.name !== 'AbortError') status.failed(e, shown);
    }
  });
}

function groupRow(realm, g) {
  const consumers = g.consumers || [];
  const listed = consumers.slice(0, MAX_CONSUMERS_LISTED);
  return h('tr', { 'data-group': g.name },
    h('th', { scope: 'row', class: 'c-group' }, h('a', { href: format([GROUPS, realm, g.name]), 'data-focus': `group:${g.name}` }, g.name)),
    h('td', { class: 'c-scope' }, scopeOf(realm, g)),
    h('td', { class: 'num c-lag' }, gauge(g.lag, 'warn')),
    h('td', { class: 'num c-in-flight' }, number(g.in_flight)),
    h('td', { class: 'num c-parked' }, gauge(g.parked, 'bad')),
    h('td', { class: 'num c-checkpoint' }, `${number(g.checkpoint)} / ${number(g.head)}`),
    h('td', { class: 'c-consumers' }, consumers.length
      ? h('ul', { class: 'consumers' }, listed.map(consumerLine),
        consumers.length > listed.length ? h('li', { class: 'muted' }, `and ${consumers.length - listed.length} more`) : null)
      : h('span', { class: 'muted' }, 'none yet')));
}

// ---------------------------------------------------------------- one group

function renderGroup(main, crumbs, realm, name, signal) {
  document.title = `${name} · consumer groups of ${realm} · perhap`;
  const status = freshness();
  const lede = h('p', { class: 'lede' }, `in realm ${realm}`);
  const stats = h('dl', { class: 'stats' });
  const facts = h('dl', { class: 'facts group-facts' });
  const consumerBody = h('tbody');
  const noConsumers = h('p', { class: 'empty', hidden: true }, 'No consumer has asked for events yet.');
  const consumerTable = h('table', { class: 'groups consumers-table' },
    h('caption', { class: 'sr-only' }, `Consumers of group ${name}`),
    h('thead', {}, h('tr', {},
      h('th', { scope: 'col' }, 'Consumer'),
      h('th', { scope: 'col', class: 'num' }, 'In flight'),
      h('th', { scope: 'col' }, 'Last seen'))),
    consumerBody);
  const parkedCard = h('section', { class: 'card', id: 'parked', 'aria-labelledby': 'parked-title' });

  main.replaceChildren(crumbs,
    h('header', { class: 'page-head' }, h('p', { class: 'kind' }, 'consumer group'), h('h1', {}, name), lede),
    h('section', { class: 'card', 'aria-labelledby': 'progress-title' },
      h('div', { class: 'section-head' }, h('h2', { id: 'progress-title' }, 'Progress')),
      h('div', { class: 'card-body' }, stats, facts),
      h('div', { class: 'list-foot' }, status.line)),
    h('section', { class: 'card', 'aria-labelledby': 'consumers-title' },
      h('div', { class: 'section-head' }, h('h2', { id: 'consumers-title' }, 'Consumers')),
      h('div', { class: 'table-wrap' }, consumerTable), noConsumers),
    parkedCard);
  announce(`Consumer group ${name}`);

  const parkedView = renderParked(parkedCard, realm, name, signal, () => refresh());
  let shown = false;
  const refresh = poll(signal, async () => {
    try {
      const [g] = await Promise.all([group(realm, name, signal), parkedView.load()]);
      fillGroup(g);
      parkedView.total(Number(g.parked));
      shown = true;
      status.ok();
    } catch (e) {
      if (e.name !== 'AbortError') status.failed(e, shown);
    }
  });
  return refresh;

  function fillGroup(g) {
    lede.replaceChildren(`in realm ${realm} · created `, time(g.created));
    const stat = (label, value, hint) => h('div', { class: 'stat', title: hint },
      h('dt', {}, label), h('dd', {}, value));
    stats.replaceChildren(
      stat('Lag', gauge(g.lag, 'warn'), 'Events of the scope not yet acknowledged or parked'),
      stat('In flight', number(g.in_flight), 'Leased to a consumer, not yet acknowledged'),
      stat('Parked', gauge(g.parked, 'bad'), 'Given up on after max_deliveries, or parked by a consumer: replay them below'),
      stat('Checkpoint', number(g.checkpoint), 'Every event of the scope up to this position is acknowledged or parked'),
      stat('Head', number(g.head), 'Position of the newest event of the scope'));
    const fact = (label, ...value) => [h('dt', {}, label), h('dd', {}, ...value)];
    const start = typeof g.start === 'string' ? (g.start === 'end' ? 'end (events appended after the group was made)' : 'beginning')
      : `position ${number(g.start)}`;
    facts.replaceChildren(...[
      fact('Scope', scopeOf(realm, g)),
      fact('Start', start),
      fact('Ack timeout', `${stringify(g.ack_timeout)} s`),
      fact('Max deliveries', number(g.max_deliveries)),
      fact('Max in flight', `${number(g.max_in_flight)} per consumer`),
      fact('Delivered', `${number(g.delivered)} deliveries, ${number(g.redeliveries)} of them again`),
      fact('Acknowledged', number(g.acknowledged))].flat());
    const consumers = g.consumers || [];
    keepFocus(consumerBody, () => consumerBody.replaceChildren(...consumers.map((c) => h('tr', { 'data-consumer': c.consumer },
      h('th', { scope: 'row', class: 'mono' }, c.consumer),
      h('td', { class: 'num' }, number(c.in_flight)),
      h('td', {}, h('span', {}, ago(c.last_seen)), ' ', h('span', { class: 'muted small' }, '(', time(c.last_seen), ')'))))));
    consumerTable.hidden = !consumers.length;
    noConsumers.hidden = consumers.length > 0;
  }
}

// The parked events of a group, with a check box each, "Replay selected" and "Replay all".
// load() reads them again (the page refreshes it with the group); the table is rebuilt only when
// the list changed, so a refresh never unticks a box.
function renderParked(section, realm, name, signal, refreshGroup) {
  const selected = new Set();
  let busy = false; // a replay is on its way
  const body = h('tbody');
  const all = h('input', { type: 'checkbox', id: 'parked-all', 'aria-label': 'Select every parked event shown' });
  const table = h('table', { class: 'groups parked-table' },
    h('caption', { class: 'sr-only' }, `Parked events of group ${name}`),
    h('thead', {}, h('tr', {},
      h('th', { scope: 'col', class: 'c-pick' }, all),
      h('th', { scope: 'col', class: 'num' }, 'Position'),
      h('th', { scope: 'col' }, 'Entity'),
      h('th', { scope: 'col' }, 'Type'),
      h('th', { scope: 'col', class: 'num', title: 'Deliveries made before it was parked' }, 'Deliveries'),
      h('th', { scope: 'col' }, 'Why'),
      h('th', { scope: 'col' }, 'Parked'),
      h('th', { scope: 'col' }, 'Event id'),
      h('th', { scope: 'col', class: 'c-data' }, 'Data'))),
    body);
  const replaySome = h('button', { type: 'button', id: 'replay-selected', disabled: true }, 'Replay selected');
  const replayAll = h('button', { type: 'button', id: 'replay-all', class: 'primary', disabled: true }, 'Replay all');
  const count = h('span', { class: 'count', id: 'parked-count' });
  const empty = h('p', { class: 'empty', hidden: true }, 'No parked events: nothing has been given up on.');
  const note = h('p', { class: 'note', hidden: true });
  const result = h('div', { class: 'result', id: 'replay-result', role: 'status', 'aria-live': 'polite' });
  section.replaceChildren(
    h('div', { class: 'section-head' },
      h('h2', { id: 'parked-title' }, 'Parked events'), count,
      h('div', { class: 'toolbar' }, replaySome, replayAll)),
    h('p', { class: 'note' }, 'A parked event is no longer delivered: a consumer parked it, or it was delivered ',
      'max deliveries times without an acknowledgement. Replay puts it back, to be delivered again with its delivery ',
      'count restarted. Replaying is a write: it needs a token with write on the realm.'),
    note, h('div', { class: 'table-wrap' }, table), empty, h('div', { class: 'card-body replay-body' }, result));

  let events = [];
  let listKey = null;
  let parkedTotal = 0; // the group's parked count: more than are shown when over MAX_PARKED_ROWS
  const sync = () => {
    const ids = new Set(events.map((e) => e.event_id));
    for (const id of selected) if (!ids.has(id)) selected.delete(id);
    replaySome.textContent = selected.size ? `Replay selected (${number(selected.size)})` : 'Replay selected';
    replaySome.disabled = busy || !selected.size;
    replayAll.disabled = busy || !(events.length || parkedTotal);
    const boxes = [...body.querySelectorAll('input[type=checkbox]')];
    all.checked = boxes.length > 0 && boxes.every((b) => b.checked);
    all.indeterminate = !all.checked && boxes.some((b) => b.checked);
  };

  const row = (ev) => {
    const box = h('input', { type: 'checkbox', 'aria-label': `Select parked event ${ev.event_id} for replay`, 'data-focus': `pick:${ev.event_id}` });
    box.checked = selected.has(ev.event_id);
    box.addEventListener('change', () => { if (box.checked) selected.add(ev.event_id); else selected.delete(ev.event_id); sync(); });
    const why = ev.reason === 'max_deliveries' ? 'max deliveries' : ev.reason === 'nack' ? 'parked by a consumer' : String(ev.reason);
    return h('tr', { 'data-id': ev.event_id },
      h('td', { class: 'c-pick' }, box),
      h('td', { class: 'num' }, number(ev.position)),
      h('td', { class: 'c-entity' }, ev.entity),
      h('td', {}, h('span', { class: 'tag' }, ev.type)),
      h('td', { class: 'num' }, number(ev.delivery)),
      h('td', { class: 'c-reason', 'data-reason': ev.reason }, why),
      h('td', { class: 'c-time' }, time(ev.parked_at)),
      // The event opens over this page (which keeps its ticked boxes), with its domain in the address.
      h('td', { class: 'c-id' }, h('a', { href: format([GROUPS, realm, name], { event: ev.event_id, domain: ev.domain }), class: 'mono', 'data-focus': `open:${ev.event_id}`,
        'aria-label': `Open event ${ev.event_id} (${ev.type} of ${ev.entity})` }, shortId(ev.event_id))),
      h('td', { class: 'c-data mono' }, preview(ev.event)));
  };

  all.addEventListener('change', () => {
    for (const box of body.querySelectorAll('input[type=checkbox]')) {
      box.checked = all.checked;
      const id = box.closest('tr').dataset.id;
      if (all.checked) selected.add(id); else selected.delete(id);
    }
    sync();
  });

  const replay = async (ids) => {
    busy = true;
    sync();
    show('busy', ids ? `Replaying ${number(ids.length)} event${ids.length === 1 ? '' : 's'}…` : 'Replaying every parked event…');
    try {
      const { replayed } = await replayParked(realm, name, ids);
      const n = Number(replayed);
      show('ok', `Replayed ${number(n)} event${n === 1 ? '' : 's'}: ${n === 1 ? 'it goes' : 'they go'} back to the group and will be delivered again.`);
      announce(`Replayed ${n} parked event${n === 1 ? '' : 's'}`);
      if (ids) for (const id of ids) selected.delete(id);
      listKey = null; // rebuild the table on the next load, whatever it holds
    } catch (e) {
      if (e.name === 'AbortError') return;
      show('bad', explain(e));
    } finally {
      busy = false;
      sync();
    }
    refreshGroup();
  };
  replaySome.addEventListener('click', () => replay([...selected]));
  replayAll.addEventListener('click', () => replay(null));

  function show(kind, text) {
    result.dataset.kind = kind;
    result.replaceChildren(h('p', {}, text));
  }

  return {
    async load() {
      const page = await parked(realm, name, { limit: MAX_PARKED_ROWS, signal });
      events = page.events;
      const key = JSON.stringify(events.map((e) => [e.event_id, e.parked_at]));
      if (key !== listKey) {
        listKey = key;
        keepFocus(body, () => body.replaceChildren(...events.map(row)));
        table.hidden = !events.length;
        empty.hidden = events.length > 0;
        all.disabled = !events.length;
      }
      sync();
    },
    // The group's own count, read with the list: says when there are more than the rows shown.
    total(n) {
      parkedTotal = Math.max(n, events.length);
      count.textContent = parkedTotal ? `${number(parkedTotal)} parked` : '';
      note.hidden = parkedTotal <= events.length;
      note.textContent = `Showing the first ${number(events.length)} of ${number(parkedTotal)} parked events; “Replay all” replays every one.`;
      sync();
    },
  };
}
