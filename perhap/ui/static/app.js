// The perhap web UI: a single page that follows the URL's hash (see route.js).
// Each scope view owns an AbortController; leaving the view aborts its requests and streams.
// After in-app navigation the new view's heading gets the keyboard focus (see landOn).

import { request } from './api.js';
import { $, announce, h, typing } from './dom.js';
import { eventOf, format, GROUPS, LEVELS, NO_EVENT, orderOf, parse, typesOf, withParams } from './route.js';
import { renderNav } from './nav.js';
import { renderEvents } from './events.js';
import { renderTail } from './tail.js';
import { nameProblem, renderAppend } from './append.js';
import { closeEvent, showEvent } from './detail.js';
import { setupAuth } from './auth.js';
import { ScopeHead } from './head.js';
import { renderGroupsView } from './groups.js';

const KINDS = ['realm', 'domain', 'entity', 'event type'];
const view = { key: null, abort: null, navKey: null, navStop: null, route: null, detailFromList: false, refresh: null, head: null, entry: 0 };

// Each history entry of the page is numbered in its state, so that the dialog can tell whether the
// view drawn before it is the entry just before it (a link or Enter from there) or not (Back from a
// later entry): only then is closing it a step back. Returns the entry's number.
function numberEntry(navigated) {
  const known = history.state?.entry;
  if (Number.isInteger(known)) return known;
  const entry = navigated ? view.entry + 1 : 0;
  history.replaceState({ ...history.state, entry }, '');
  return entry;
}

// navigated: the address changed while the page was open (a link, Enter, the back button), as
// opposed to the first load or the token dialog drawing the view again.
function render(navigated = false) {
  const route = parse();
  const entry = numberEntry(navigated);
  const follows = entry === view.entry + 1;
  view.entry = entry;
  const { names, params } = route;
  // The event dialog is a parameter (with its domain where the view has none, see eventOf): opening
  // or closing it leaves the view underneath alone.
  const key = JSON.stringify([names, orderOf(route), typesOf(route), params.get('after'), params.get('before')]);
  const previous = view.route;
  const changed = key !== view.key;
  const focused = $('#main').contains(document.activeElement) ? document.activeElement.id : '';
  const badEvent = badName(route.names) ? null : badEventName(route);
  if (badEvent) { // the view is valid, the event over it is not: nothing is read for either
    closeEvent();
    view.abort?.abort();
    view.refresh = null;
    view.key = null; // the next address draws its view again
    view.route = route;
    renderInvalid(route, badEvent);
    return;
  }
  if (changed) {
    view.key = key;
    renderScope(route);
  }
  view.route = route;
  const detail = badName(route.names) ? null : eventOf(route);
  // The new view's heading gets the focus once the event dialog is closed (a link inside it may be
  // what navigated, and focus cannot leave a modal dialog), and before one opens, so that closing
  // that one gives the focus back to the heading.
  if (!detail) closeEvent();
  if (changed && navigated) landOn(focused);
  if (detail) {
    // A step back only to the entry just before, where the dialog was opened (a list, or where a
    // "Go to event" started): after Back into the dialog from a later view, that step would leave
    // the list (or, after a shared link, the app).
    view.detailFromList = Boolean(previous && !previous.params.get('event') && navigated && follows);
    showEvent(detail.realm, detail.domain, detail.id, () => {
      // Closed with Escape or the button: back to the list (a step back if we came from it).
      if (view.detailFromList) history.back();
      else { history.replaceState({ entry: view.entry }, '', withParams(parse(), NO_EVENT)); render(); }
    });
  }
}

// The link or button that navigated is usually gone with the old view, which leaves the focus on
// <body>: keyboard and screen reader users would start again from the top of the page. They land
// on the new view's heading instead; a field of the view that is drawn again (the types filter,
// after adding a type) keeps the focus.
// focused: the id of the element of #main that had the focus before (or '').
function landOn(focused) {
  const main = $('#main');
  const same = focused ? document.getElementById(focused) : null;
  if (same && main.contains(same)) { same.focus(); return; }
  const heading = $('h1', main);
  if (!heading) { main.focus(); return; }
  heading.tabIndex = -1; // focusable from script, not a Tab stop
  heading.focus();
}

// A token was given: draw again what may have been refused without one (lists, the live tail), in
// the same place. The consumer groups pages refresh in place instead, so ticked boxes stay ticked.
// The append form stays as it is: an append that waited for the token answers into it.
function reload() {
  const route = parse();
  view.navKey = null;
  if (view.refresh) { renderSidebar(route); view.refresh(); return; }
  // The live tail goes on after the last event it had (a stream refused while the server asked
  // for a token missed what was committed meanwhile), not from the scope's newest event now.
  renderScope(route, { keepAppend: true, resumeAfter: view.head?.event ?? null });
}

// The first name of an address that the server would refuse (nameProblem), as {index, kind,
// problem}; null when all are valid. "." and ".." matter most: the browser resolves them in a
// request's URL like a folder path (written %2E%2E too), so the page would read another scope and
// show it under that name.
function badName(names) {
  const groupsView = names[0] === GROUPS;
  const levels = groupsView ? ['realm', 'group'] : LEVELS;
  const kinds = groupsView ? ['realm', 'consumer group'] : KINDS;
  const first = groupsView ? 1 : 0;
  for (let i = first; i < names.length; i++) {
    const problem = nameProblem(names[i], levels[i - first]);
    if (problem) return { index: i, kind: kinds[i - first], problem };
  }
  return null;
}

// The same for the event open over a view (?event=, and ?domain= where the view fixes none): an id
// or a domain of "..", "keys" or with a "/" would send its request to another scope.
function badEventName(route) {
  const detail = eventOf(route);
  if (!detail) return null;
  const index = route.names.length; // the view itself is valid: renderInvalid links back to it
  const inView = route.names[0] === GROUPS ? route.names.slice(1, 2) : route.names;
  const domainProblem = inView.length < 2 && detail.domain !== null ? nameProblem(detail.domain, 'domain') : '';
  if (domainProblem) return { index, kind: 'domain', problem: domainProblem };
  const idProblem = nameProblem(detail.id, 'event');
  return idProblem ? { index, kind: 'event', problem: idProblem } : null;
}

function renderSidebar(route) {
  const { names } = route;
  // The sidebar lists the children of the scope (the siblings, at the event type level); beside a
  // realm's consumer groups, the realm's domains.
  const groupsView = names[0] === GROUPS;
  const navLevels = groupsView ? names.slice(1, 2) : names.slice(0, 3);
  const navKey = JSON.stringify([navLevels, route.params.get('order')]);
  if (navKey !== view.navKey) {
    view.navStop?.();
    view.navKey = navKey;
    view.navStop = renderNav($('#sidebar'), navLevels, names[3], { order: route.params.get('order') });
  } else {
    $('#sidebar').querySelectorAll('a[aria-current]').forEach((a) => a.removeAttribute('aria-current'));
    for (const a of $('#sidebar').querySelectorAll('.keys a')) if (a.textContent === names[3]) a.setAttribute('aria-current', 'page');
  }
}

function renderScope(route, { keepAppend = false, resumeAfter = null } = {}) {
  const { names } = route;
  const depth = names.length;
  view.abort?.abort();
  view.abort = new AbortController();
  const { signal } = view.abort;
  const groupsView = names[0] === GROUPS;
  view.refresh = null;
  view.head = null;
  const bad = badName(names);
  if (bad) { renderInvalid(route, bad); return; }
  renderSidebar(route);

  const crumbs = h('nav', { class: 'crumbs', 'aria-label': 'Breadcrumb' }, h('ol', {},
    h('li', {}, h('a', { href: '#/', 'aria-current': depth ? null : 'page' }, 'All realms')),
    names.map((name, i) => h('li', {}, h('a', { href: format(names.slice(0, i + 1)), 'aria-current': i === depth - 1 ? 'page' : null, title: `${KINDS[i]} ${name}` }, name)))));

  const main = $('#main');
  if (groupsView) {
    view.refresh = renderGroupsView(main, names.slice(1), signal) ?? null;
    return;
  }
  const appendBox = (keepAppend && $('#append')) || newAppendBox(names);

  if (!depth) {
    document.title = 'perhap';
    main.replaceChildren(crumbs,
      h('header', { class: 'page-head' }, h('h1', {}, 'Event store'),
        h('p', { class: 'lede' }, 'Browse realms, domains, entities and event types on the left, ',
          'or go to an event by its id above. Every view has its own address: bookmark it or share it.')),
      health(signal), appendBox);
    announce('All realms');
    return;
  }

  document.title = `${names.join(' / ')} · perhap`;
  const live = h('section', { class: 'card live', 'aria-labelledby': 'live-title' });
  const events = h('section', { class: 'card', 'aria-labelledby': 'events-title' });
  main.replaceChildren(crumbs,
    h('header', { class: 'page-head' },
      h('p', { class: 'kind' }, KINDS[depth - 1]),
      h('h1', {}, names[depth - 1]),
      depth > 1 ? h('p', { class: 'lede' }, `in ${names.slice(0, depth - 1).map((n, i) => `${LEVELS[i]} ${n}`).join(', ')}`) : null,
      h('p', { class: 'page-links' }, h('a', { href: format([GROUPS, names[0]]), id: 'groups-link' }, 'Consumer groups'),
        h('span', { class: 'muted' }, depth > 1 ? ` of realm ${names[0]}` : ' of this realm: lag, consumers, parked events'))),
    live, events, appendBox);
  // The scope's newest event: read once, shared by the live tail (which starts after it) and the list.
  const head = view.head = new ScopeHead(names, typesOf(route), resumeAfter);
  renderTail(live, route, head, signal);
  renderEvents(events, route, head, signal);
  announce(`Showing ${KINDS[depth - 1]} ${names[depth - 1]}`);
}

function newAppendBox(names) {
  const box = h('details', { class: 'card append', id: 'append' },
    h('summary', {}, h('h2', {}, 'Append an event'), h('span', { class: 'muted small' }, names.length >= 3 ? `to ${names[2]}` : 'to any entity')));
  renderAppend(box.appendChild(h('div', { class: 'card-body' })), names);
  return box;
}

// An address with a name the server refuses: said in plain words, and nothing of it is read (the
// sidebar lists the valid scope above it, with a link to it).
function renderInvalid(route, { index, kind, problem }) {
  const above = route.names.slice(0, index);
  renderSidebar({ ...route, names: above });
  const groupsView = above[0] === GROUPS;
  const up = groupsView ? (above.length > 1 ? `the consumer groups of realm ${above[1]}` : 'all realms')
    : (above.length ? `${KINDS[index - 1]} ${above[index - 1]}` : 'all realms');
  const upHref = groupsView && above.length < 2 ? '#/' : format(above);
  document.title = 'Not a valid address · perhap';
  $('#main').replaceChildren(
    h('header', { class: 'page-head' },
      h('h1', {}, 'Not a valid address'),
      h('p', { class: 'lede' }, `The ${kind} name ${problem}, so this address names no ${kind}. `,
        'Nothing was read for it. ', h('a', { href: upHref }, `Go to ${up}`), '.')));
  announce('Not a valid address');
}

// The root page's one fact about the server: does the store answer?
function health(signal) {
  const line = h('p', { class: 'health', role: 'status' }, 'Checking the store…');
  request('/_health', { signal }).then(
    () => { line.dataset.ok = 'true'; line.textContent = 'The store answers.'; },
    (e) => { if (e.name !== 'AbortError') { line.dataset.ok = 'false'; line.textContent = `The store does not answer: ${e.message}`; } });
  return line;
}

// "realm/domain/id", "/realm/domain/id", a full event URL, the UI's own link to an event (any view's
// address with ?event=, as "Copy link" gives it), or just an id within the realm in view (over a
// domain's view, an event of that domain; over a realm's or a consumer group's, one looked up in
// the realm).
function jump(text) {
  const { names } = parse();
  const groupsView = names[0] === GROUPS;
  const inView = groupsView ? names.slice(1, 2) : names;
  const linked = linkedEvent(text.trim(), inView);
  if (linked) {
    location.hash = format(linked.domain ? [linked.realm, linked.domain] : [linked.realm], { event: linked.id });
    return '';
  }
  let parts = text.trim().replace(/^[a-z]+:\/\/[^/]+/i, '').split(/[/#]/).filter((p) => p && p !== '_ui' && p !== '#');
  parts = parts.map((p) => { try { return decodeURIComponent(p); } catch { return p; } });
  if (parts.length === 1 && names.length > (groupsView ? 1 : 0)) {
    location.hash = format(groupsView ? names : names.slice(0, 2), { event: parts[0] });
    return '';
  }
  if (parts.length < 3) return 'Type realm/domain/event-id, paste a link to an event, or just the id inside a realm.';
  const [realm, domain, id] = parts.slice(-3);
  location.hash = format([realm, domain], { event: id });
  return '';
}

// The event of a UI address with ?event= (http://host/_ui#/shop/orders?event=<id>, or the hash
// alone), as eventOf reads it: {realm, domain (null: look it up in the realm), id}; null if none.
// An address without a realm means the realm in view (inView: its names).
function linkedEvent(text, inView) {
  const q = text.indexOf('?');
  if (q < 0) return null;
  const params = new URLSearchParams(text.slice(q + 1));
  if (!params.get('event')?.trim()) return null;
  const where = text.slice(0, q).replace(/^[a-z]+:\/\/[^/]+/i, '').replace(/^.*#/, '');
  const route = parse('#' + (where.replace(/^\/?_ui(?=\/|$)/, '') || '/') + '?' + params);
  return eventOf(route.names.length ? route : { names: inView.slice(0, 2), params });
}

function setup() {
  setupAuth(reload);
  $('#jump-form').addEventListener('submit', (e) => {
    e.preventDefault();
    $('#jump-status').textContent = jump($('#jump-input').value);
  });
  $('#jump-input').addEventListener('input', () => { $('#jump-status').textContent = ''; });
  $('#skip-link').addEventListener('click', (e) => { e.preventDefault(); $('#main').focus(); });
  const menu = $('#menu-button');
  menu.addEventListener('click', () => {
    const open = document.body.classList.toggle('nav-open');
    menu.setAttribute('aria-expanded', String(open));
  });
  $('#sidebar').addEventListener('click', (e) => {
    if (e.target.closest('a')) { document.body.classList.remove('nav-open'); menu.setAttribute('aria-expanded', 'false'); }
  });

  // Single-key shortcuts, ignored while typing: / filter, g go to event, p pause, n new event.
  document.addEventListener('keydown', (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey || typing(e) || document.querySelector('dialog[open]')) return;
    const act = {
      '/': () => $('#key-filter')?.focus(),
      g: () => $('#jump-input').focus(),
      p: () => $('#tail-pause')?.click(),
      n: () => {
        const box = $('#append');
        if (!box) return; // a page without the form (consumer groups)
        box.open = true;
        ([...box.querySelectorAll('.grid4 input')].find((i) => !i.value) || $('#append-event')).focus();
      },
    }[e.key];
    if (act) { e.preventDefault(); act(); }
  });

  window.addEventListener('hashchange', () => render(true));
  render();
}

setup();
