// Live streams of a scope (Server-Sent Events), resumed after drops without losing an event.
//
// Without a token the browser's EventSource does the work: after a dropped connection it
// reconnects by itself and sends Last-Event-ID, the id of the last event it delivered, so the
// server resumes right after it. EventSource cannot send an Authorization header, so with a token
// the stream is read with fetch() and parsed here, and the reconnect with Last-Event-ID is ours.

import { authHeaders, needToken, parseJSON, path, refusedForGood, request, token, url } from './api.js';

const MAX_DELAY = 30_000;

// follow(levels, {following, afterPosition, types, onEvent, onState}) starts a stream of events
// after `following` or else after position `afterPosition` (neither: from the start), of any of
// `types` when given; returns stop(). Once an event has arrived, it is the start of any reconnect.
// onState(state, detail) gets 'connecting', 'live', 'reconnecting' or 'stopped' (no token given).
export function follow(levels, { following = null, afterPosition = null, types = [], onEvent, onState = () => {} }) {
  const stream = { last: following, from: afterPosition, stopped: false, stop: null };
  const seen = new Set(); // the last ids delivered: a replay after a reconnect is never shown twice
  const deliver = (id, data) => {
    if (id && seen.has(id)) return;
    seen.add(id);
    if (seen.size > 2000) seen.delete(seen.values().next().value);
    stream.last = id;
    onEvent(parseJSON(data));
  };
  const start = () => (token.get() ? viaFetch : viaEventSource)(levels, types, stream, deliver, onState, start);
  start();
  return () => { stream.stopped = true; stream.stop?.(); };
}

// The stream's start as query parameters: the last event delivered, or else the position it began
// after (the API refuses both at once).
const startOf = (stream) => (stream.last ? { following: stream.last } : { after_position: stream.from });

function viaEventSource(levels, types, stream, deliver, onState, restart) {
  let delay = 1000;
  let source = null;
  const open = () => {
    if (stream.stopped) return;
    onState('connecting');
    // The URL carries the point we started from; on its own reconnects the browser adds the
    // Last-Event-ID header, which the server prefers over `following` and `after_position`.
    source = new EventSource(url(path(...levels), { ...startOf(stream), type: types }));
    source.onopen = () => { delay = 1000; onState('live'); };
    source.onmessage = (m) => deliver(m.lastEventId, m.data);
    source.onerror = async () => {
      // Still CONNECTING: the browser retries by itself, sending Last-Event-ID.
      if (source.readyState !== EventSource.CLOSED) { onState('reconnecting'); return; }
      // The browser gave up (the server answered with an error status), and EventSource does not
      // say which: ask the stream's URL once more to show why (a 429: too many open streams), and
      // a plain request (a 401 opens the token dialog); then start again from the last event we have.
      const retrying = `retrying in ${Math.round(delay / 1000)} s`;
      onState('reconnecting', retrying);
      const { why, status } = await refusal(url(path(...levels), { ...startOf(stream), type: types }));
      if (stopsTheStream(status)) { onState('stopped', why); return; }
      try {
        await request(path(...levels), { params: { limit: 1, type: types } });
      } catch (e) {
        if (e.status === 401) { onState('stopped', 'the stream needs a token'); return; } // dialog cancelled
      }
      if (stream.stopped) return;
      if (why) onState('reconnecting', `${why}; ${retrying}`);
      setTimeout(() => (token.get() ? restart() : open()), delay);
      delay = Math.min(delay * 2, MAX_DELAY);
    };
  };
  stream.stop = () => source?.close();
  open();
}

// Why the server refuses a stream now, and its status ('' and 0 when it does not: the stream it
// opened is closed at once; or when it does not answer).
async function refusal(streamUrl) {
  const probe = new AbortController();
  try {
    const res = await fetch(streamUrl, { headers: { Accept: 'text/event-stream' }, signal: probe.signal, cache: 'no-store' });
    return res.ok ? { why: '', status: 0 } : { why: await problemText(res), status: res.status };
  } catch {
    return { why: '', status: 0 };
  } finally {
    probe.abort();
  }
}

// A refusal that asking again will not change (the event to resume after is not in the store the
// server came back with: 404; the scope or the token refused: 400, 403) stops the stream, which says
// why; a 401 asks for a token instead.
const stopsTheStream = (status) => status >= 400 && status !== 401 && refusedForGood(status);

// An error answer in words: its problem's title (a 429's "Too many open streams") and status.
async function problemText(res) {
  const problem = await res.json().catch(() => null);
  return problem?.title ? `${problem.title} (${res.status})` : `HTTP ${res.status}`;
}

function viaFetch(levels, types, stream, deliver, onState) {
  const abort = new AbortController();
  stream.stop = () => abort.abort();
  (async () => {
    let delay = 1000;
    while (!stream.stopped) {
      onState('connecting');
      try {
        const headers = { Accept: 'text/event-stream', ...authHeaders() };
        if (stream.last) headers['Last-Event-ID'] = stream.last;
        // The event to resume after goes in Last-Event-ID; only a stream with none yet needs the URL's.
        const res = await fetch(url(path(...levels), { after_position: startOf(stream).after_position, type: types }),
          { headers, signal: abort.signal, cache: 'no-store' });
        if (res.status === 401) {
          if (await needToken('The live stream needs a token.')) continue;
          onState('stopped', 'the stream needs a token');
          return;
        }
        if (stopsTheStream(res.status)) { onState('stopped', await problemText(res)); return; }
        if (!res.ok) throw new Error(await problemText(res));
        onState('live');
        delay = 1000;
        await readEvents(res.body, (m) => { if (m.data != null) deliver(m.id, m.data); });
        // The server ended the stream (it is stopping): reconnect at once, from the last event.
        delay = 500;
      } catch (e) {
        if (stream.stopped) return;
        onState('reconnecting', `${e.message}; retrying in ${Math.round(delay / 1000)} s`);
      }
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, MAX_DELAY);
    }
  })();
}

// A text/event-stream parser (per the HTML standard): fields up to a blank line make a message;
// comment lines (the server's keep-alives) are skipped; the last id carries over between messages.
export async function readEvents(body, onMessage) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  let data = [];
  let id = '';
  let halfCRLF = false; // the last chunk ended in '\r': a '\n' opening the next one belongs to it
  for (;;) {
    let { value, done } = await reader.read();
    if (done) return;
    if (halfCRLF && value.startsWith('\n')) value = value.slice(1);
    halfCRLF = value.endsWith('\r');
    buffer += value;
    const lines = buffer.split(/\r\n|\r|\n/);
    buffer = lines.pop();
    for (const line of lines) {
      if (line === '') {
        if (data.length) onMessage({ id, data: data.join('\n') });
        data = [];
        continue;
      }
      if (line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      let val = colon < 0 ? '' : line.slice(colon + 1);
      if (val.startsWith(' ')) val = val.slice(1);
      if (field === 'data') data.push(val);
      else if (field === 'id' && !val.includes('\0')) id = val;
    }
  }
}
