// The live tail of the scope in view: new events on top as they commit, a counter, pause/resume,
// and the rate chart. It starts after the scope's newest event (one read, see head.js), so it
// shows what happens from now on rather than replaying history.

import { explain, refusedForGood } from './api.js';
import { h, number, preview, time } from './dom.js';
import { eventHref, typesOf } from './route.js';
import { follow } from './sse.js';
import { rateChart } from './chart.js';

const MAX_ROWS = 200; // rows kept on screen; the counter still counts every event
const MAX_DELAY = 30_000; // the longest wait between tries to start, as for a dropped stream (sse.js)

const STATES = {
  finding: 'Finding the newest event…', connecting: 'Connecting…', live: 'Live',
  reconnecting: 'Reconnecting…', paused: 'Paused', stopped: 'Stopped',
};

export function renderTail(section, route, head, signal) {
  const { names } = route;
  const depth = names.length;
  const types = typesOf(route);
  const chart = rateChart();
  const pill = h('span', { class: 'pill', 'data-state': 'finding' }, STATES.finding);
  const counter = h('span', { class: 'counter', id: 'tail-count', 'aria-live': 'off' }, '0 new');
  const pause = h('button', { type: 'button', id: 'tail-pause', 'aria-pressed': 'false', 'aria-keyshortcuts': 'p' }, 'Pause');
  const clearButton = h('button', { type: 'button', class: 'quiet' }, 'Clear');
  const note = h('div', { class: 'tail-note', role: 'status' });
  const log = h('ol', { class: 'tail', id: 'tail-list', role: 'log', 'aria-live': 'polite', 'aria-label': 'Live events, newest first' });
  const empty = h('li', { class: 'tail-empty' }, 'Waiting for new events…');
  log.append(empty);

  section.replaceChildren(
    h('div', { class: 'section-head' },
      h('h2', { id: 'live-title' }, 'Live'), pill,
      h('div', { class: 'toolbar' }, counter, pause, clearButton)),
    h('div', { class: 'live-body' },
      h('div', { class: 'live-chart' }, h('div', { class: 'rate-line' }, h('span', { class: 'muted' }, 'Rate'), chart.rateText), chart.figure),
      h('div', { class: 'live-list' }, note, log)));

  let total = 0;
  let paused = false;
  let pending = []; // received, not yet on screen (paused, or waiting for the next frame)
  let flushQueued = false;
  let state = 'finding';
  const setState = (s, detail) => {
    state = s;
    const shown = paused && s === 'live' ? 'paused' : s;
    pill.dataset.state = shown;
    pill.textContent = STATES[shown] + (detail && s !== 'live' ? ` (${detail})` : '');
  };

  // Rows are added in one batch per frame, so a burst of thousands of events stays smooth.
  const flush = () => {
    flushQueued = false;
    if (paused || !pending.length) return;
    empty.remove();
    const batch = pending.slice(-MAX_ROWS);
    pending = [];
    const frag = document.createDocumentFragment();
    for (let i = batch.length - 1; i >= 0; i--) frag.append(row(batch[i]));
    log.prepend(frag);
    while (log.children.length > MAX_ROWS) log.lastElementChild.remove();
    chart.draw();
  };
  const row = (ev) => h('li', { class: 'fresh', 'data-id': ev.event_id },
    time(ev.timestamp),
    h('span', { class: 'tag' }, ev.type),
    depth < 3 ? h('span', { class: 'entity' }, ev.entity) : null,
    h('span', { class: 'ver' }, `v${ev.version} `, h('span', { class: 'pos', title: 'Position in the realm' }, `#${number(ev.position)}`)),
    h('a', { href: eventHref(route, ev), class: 'mono data' }, preview(ev.event, 100)));

  const onEvent = (ev) => {
    head.advance(ev);
    total++;
    counter.textContent = `${number(total)} new`;
    chart.add(ev.timestamp);
    pending.push(ev);
    if (pending.length > MAX_ROWS * 5) pending = pending.slice(-MAX_ROWS); // only the newest can show
    if (paused) { pause.textContent = `Resume (${number(Math.min(pending.length, MAX_ROWS))}${pending.length >= MAX_ROWS ? '+' : ''} waiting)`; return; }
    if (!flushQueued) { flushQueued = true; requestAnimationFrame(flush); setTimeout(flush, 250); }
  };

  pause.addEventListener('click', () => {
    paused = !paused;
    pause.setAttribute('aria-pressed', String(paused));
    pause.textContent = paused ? 'Resume' : 'Pause';
    setState(state);
    if (!paused) flush();
  });
  clearButton.addEventListener('click', () => {
    log.replaceChildren(empty);
    total = 0;
    counter.textContent = '0 new';
    // Events waiting behind Pause arrived before the Clear: they go too (the counter says 0).
    pending = [];
    if (paused) pause.textContent = 'Resume';
  });

  let stop = () => {};
  let retry = null;
  signal.addEventListener('abort', () => { clearTimeout(retry); stop(); chart.stop(); });
  // A start that failed for a reason that passes (the store or the network is down) is tried
  // again, backing off as a dropped stream does; one that does not (no token given, forbidden,
  // not found, refused) stops the tail.
  let delay = 1000;
  const start = () => head.tailStart(signal).then((from) => {
    if (signal.aborted) return;
    note.textContent = '';
    stop = follow(names, { ...from, types, onEvent, onState: setState });
  }, (e) => {
    if (e.name === 'AbortError' || signal.aborted) return;
    note.textContent = explain(e);
    if (refusedForGood(e.status)) { setState('stopped'); return; }
    setState('reconnecting', `retrying in ${Math.round(delay / 1000)} s`);
    retry = setTimeout(start, delay);
    delay = Math.min(delay * 2, MAX_DELAY);
  });
  start();
}
