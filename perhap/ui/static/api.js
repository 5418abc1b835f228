// The HTTP API, as the UI uses it: paths, exact JSON, bearer tokens, problem+json errors.

const TOKEN_KEY = 'perhap.token';

// The token lives in sessionStorage only: it is gone when the browser session ends and is never
// written to localStorage, cookies or the URL.
export const token = {
  get: () => sessionStorage.getItem(TOKEN_KEY) || '',
  set: (value) => sessionStorage.setItem(TOKEN_KEY, value),
  clear: () => sessionStorage.removeItem(TOKEN_KEY),
};

export function authHeaders() {
  const t = token.get();
  return t ? { Authorization: `Bearer ${t}` } : {};
}

// One path segment per name, each percent-encoded, so '/', '?', '#' and '%' in names stay names.
export const path = (...names) => '/' + names.map(encodeURIComponent).join('/');

// An array value repeats its parameter (type=a&type=b).
export function url(p, params = {}) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    for (const one of Array.isArray(v) ? v : [v]) if (one != null && one !== '') q.append(k, one);
  }
  const s = q.toString();
  return s ? `${p}?${s}` : p;
}

// ---------------------------------------------------------------- exact JSON

// JSON.parse turns 12345678901234567890 into 12345678901234567000 and 1.0 into 1; an event store
// UI must show what is stored, so numbers whose text would change keep their source text.
export class RawNumber {
  constructor(source) { this.source = source; }
  toString() { return this.source; }
}

export function parseJSON(text) {
  return JSON.parse(text, (key, value, context) => {
    if (typeof value === 'number' && context && context.source !== String(value)) return new RawNumber(context.source);
    return value;
  });
}

// JSON text of a parsed value, keeping RawNumbers exact (indent 0: compact).
export function stringify(value, indent = 0, depth = 0) {
  if (value instanceof RawNumber) return value.source;
  if (value === null || typeof value !== 'object') return JSON.stringify(value) ?? 'null';
  const pad = indent ? '\n' + ' '.repeat(indent * (depth + 1)) : '';
  const end = indent ? '\n' + ' '.repeat(indent * depth) : '';
  const sep = indent ? ': ' : ':';
  if (Array.isArray(value)) {
    if (!value.length) return '[]';
    return '[' + value.map((v) => pad + stringify(v, indent, depth + 1)).join(',') + end + ']';
  }
  const keys = Object.keys(value);
  if (!keys.length) return '{}';
  return '{' + keys.map((k) => pad + JSON.stringify(k) + sep + stringify(value[k], indent, depth + 1)).join(',') + end + '}';
}

// ---------------------------------------------------------------- errors

// method: the request's ('GET' when unknown), so that a refused read is not told as a refused write.
export class Problem extends Error {
  constructor(status, body, method = 'GET') {
    super(body.detail || body.title || `HTTP ${status}`);
    this.status = status;
    this.body = body;
    this.method = method;
  }
}

async function problemFrom(res, method) {
  const text = await res.text();
  try {
    const body = parseJSON(text); // exact: a version past 2^53 stays as the server wrote it
    if (body && typeof body === 'object') return new Problem(res.status, body, method);
  } catch { /* not JSON: a proxy's page, say */ }
  return new Problem(res.status, { title: res.statusText || `HTTP ${res.status}`, status: res.status, detail: text.slice(0, 200) }, method);
}

// GET /{realm}/{domain}/{name} answers the event with that id when there is one (see getEvent), so
// an entity named like the id of an event of its domain reads as that event, not as its events.
export class EventNotEntity extends Error {
  constructor(levels, event) {
    super(`${levels[2]} is also the id of an event in ${levels[0]}/${levels[1]}`);
    this.levels = levels;
    this.event = event;
  }
}

// A problem in plain words, for people rather than programs.
export function explain(p) {
  if (p instanceof EventNotEntity) {
    return `“${p.levels[2]}” is also the id of an event in domain ${p.levels[1]}, so the API answers ` +
      'that one event here rather than this entity’s events.';
  }
  if (p.status == null) return `Something went wrong in the page: ${p.message}`; // not the server's answer
  const b = p.body || {};
  const slug = String(b.type || '').replace('urn:perhap:problem:', '');
  if (p.status === 0) return `Could not reach the server (${b.detail}). Is perhap running?`;
  if (slug === 'version-conflict') {
    // Shown as the server wrote them: a version past 2^53 (a RawNumber) would be rounded by Number.
    const cur = String(b.current_version), exp = String(b.expected_version);
    const fresh = Number(cur) < 0;
    const now = fresh ? 'has no events yet' : `is at version ${cur}`;
    const wanted = exp === '-1' ? 'a new entity (expected version -1)' : `version ${exp}`;
    const retry = `use expected version ${fresh ? -1 : cur}`;
    return `Not stored: version conflict. You expected ${wanted}, but the entity ${now}: ` +
      `someone else wrote to it first. Look at its latest events, then ${retry} to append after them.`;
  }
  if (slug === 'event-id-conflict') return `Not stored: the event id ${b.event_id || ''} is already used by a different event. Choose another id, or leave it empty.`;
  if (p.status === 400) return `The server refused the request: ${b.detail}.`;
  if (p.status === 401) return 'The server needs a token: set one with the Token button.';
  if (p.status === 403) return `Your token is not allowed to do this (${b.detail || 'forbidden'}). Set another token with the Token button.`;
  if (p.status === 404) return `Not found: ${b.detail}.`;
  if (p.status === 413) return `The request is too large: the server accepts at most ${b.max_body ?? '?'} bytes.`;
  if (p.status === 429) return `Too many requests or streams: ${b.detail || 'try again shortly'}.`;
  if (p.status === 503) {
    const so = p.method === 'GET' ? 'so this could not be read' : 'so nothing was stored';
    return `The storage is unavailable right now, ${so}: ${b.detail || 'try again shortly'}.`;
  }
  return `${b.title || 'Error'} (HTTP ${p.status}): ${b.detail || ''}`;
}

// ---------------------------------------------------------------- requests

// Set by the token dialog: asks for a token and resolves true when one was given.
let askForToken = async () => false;
let pendingAsk = null;
export function onTokenNeeded(fn) { askForToken = fn; }

// One dialog for any number of requests that hit 401 at the same time.
export function needToken(reason) {
  pendingAsk ??= askForToken(reason).finally(() => { pendingAsk = null; });
  return pendingAsk;
}

export async function request(p, { method = 'GET', params, body, signal } = {}) {
  for (;;) {
    const headers = { Accept: 'application/json', ...authHeaders() };
    if (body != null) headers['Content-Type'] = 'application/json';
    let res;
    try {
      res = await fetch(url(p, params), { method, headers, body, signal, cache: 'no-store' });
    } catch (e) {
      if (e.name === 'AbortError') throw e;
      throw new Problem(0, { title: 'Network error', detail: e.message }, method);
    }
    if (res.status === 401 && await needToken('The server asks for a token.')) continue;
    if (!res.ok) throw await problemFrom(res, method);
    const text = await res.text();
    return { status: res.status, data: text ? parseJSON(text) : null };
  }
}

const get = async (p, params, signal) => (await request(p, { params, signal })).data;

// levels: [] lists realms, [realm] domains, [realm, domain] entities, [realm, domain, entity] types.
export const keys = (levels, { after, limit = 200, signal } = {}) =>
  get(levels.length ? path(...levels) + '/keys' : '/keys', { after, limit }, signal);

// A page of events: `newest` reads newest first (order=desc); `types` keeps events of any of them.
// An entity named like an event id of its domain gets that event instead: EventNotEntity.
export async function read(levels, { following, limit = 100, types = [], newest = false, signal } = {}) {
  const page = await get(path(...levels), { following, limit, type: types, order: newest ? 'desc' : null }, signal);
  if (page && !Array.isArray(page.events) && page.event_id) throw new EventNotEntity(levels, page);
  return page;
}

// GET /{realm}/{domain}/{id} answers the event, or (when no such event) reads an entity of that name.
// Only the id as the server writes it names the event (lower case, hyphenated): a typed or pasted
// id is written so first.
export async function getEvent(realm, domain, id, signal) {
  const data = await get(path(realm, domain, canonicalId(id)), {}, signal);
  if (!data || data.events) throw new Problem(404, { title: 'Not found', detail: `no event ${id} in ${realm}/${domain}` });
  return data;
}

// An event known by its realm and id only (an address that does not say its domain): the realm's
// event just before it (newest first, `following` it), then the one just after that, which is it;
// then GET /{realm}/{domain}/{id}. An id not in the realm is the server's 404.
export async function findEvent(realm, id, signal) {
  const before = await read([realm], { following: id, newest: true, limit: 1, signal });
  const found = (await read([realm], { following: before.events[0]?.event_id, limit: 1, signal })).events[0];
  if (!found || found.event_id !== canonicalId(id)) throw new Problem(404, { title: 'Not found', detail: `no event ${id} in ${realm}` });
  return getEvent(realm, found.domain, found.event_id, signal);
}

// The body is assembled from the JSON texts the user typed (already validated), so numbers like
// 1.0 or 2^64-1 reach the server exactly as written.
export function append(realm, domain, entity, type, { eventText, metaText, expectedVersion, eventId }) {
  let body = `{"event":${eventText}`;
  if (metaText) body += `,"meta":${metaText}`;
  if (expectedVersion !== '' && expectedVersion != null) body += `,"expected_version":${expectedVersion}`;
  if (eventId) body += `,"event_id":${JSON.stringify(eventId)}`;
  return request(path(realm, domain, entity, type), { method: 'POST', body: body + '}' });
}

// ---------------------------------------------------------------- consumer groups

// GET /_groups/{realm} -> {"groups": [group, ...]}, sorted by name.
export const groups = (realm, signal) => get(path('_groups', realm), {}, signal);

// GET /_groups/{realm}/{group} -> the group: settings, checkpoint, head, lag, in_flight, parked, consumers.
export const group = (realm, name, signal) => get(path('_groups', realm, name), {}, signal);

// GET /_groups/{realm}/{group}/parked -> {"events": [event + delivery, parked_at, reason, ...]},
// the first `limit` of them.
export const parked = (realm, name, { limit, signal } = {}) => get(path('_groups', realm, name, 'parked'), { limit }, signal);

// POST /_groups/{realm}/{group}/parked/replay (a write): the chosen parked events, or all of them
// when eventIds is null, go back to the group for delivery. Answers {"replayed": n}.
export const replayParked = async (realm, name, eventIds = null) => (await request(path('_groups', realm, name, 'parked', 'replay'),
  { method: 'POST', body: eventIds ? JSON.stringify({ event_ids: eventIds }) : null })).data;

// An event id in the server's spelling (upper case, braces, urn:uuid: or no hyphens undone);
// anything that is no UUID stays as it is.
export function canonicalId(id) {
  const hex = id.trim().toLowerCase().replace(/^urn:uuid:/, '').replace(/[{}-]/g, '');
  if (!/^[0-9a-f]{32}$/.test(hex)) return id;
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

// A refusal that asking again will not change (not: no answer at all, too many requests, the server
// or the store unavailable): a tail that meets one stops and says why instead of retrying.
export const refusedForGood = (status) => !(status === 0 || status === 429 || status >= 500);
