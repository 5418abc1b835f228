// Where the user is, kept in the URL's hash so every view can be bookmarked and shared:
//   #/realm/domain/entity/type?order=newest&type=placed&type=paid&event=<event id>
// `type` may repeat (events of any of those types); `after` and `before` are event ids to start
// after (oldest first) or before (newest first); `event` is an event open over the view, and
// `domain` its domain where the view does not fix one (a realm, a consumer group: see eventOf).
// Each name is percent-encoded on its own, so a name may hold any character (even '/' or '?').
// The hash is used rather than a path under /_ui because names may contain dots, which the static
// server would take for file names.

export function parse(hash = location.hash) {
  const text = hash.replace(/^#\/?/, '');
  const [pathPart, query = ''] = splitOnce(text, '?');
  const names = [];
  for (const seg of pathPart.split('/')) {
    if (!seg) continue;
    try { names.push(decodeURIComponent(seg)); } catch { names.push(seg); }
  }
  return { names: names.slice(0, 4), params: new URLSearchParams(query) };
}

function splitOnce(text, sep) {
  const i = text.indexOf(sep);
  return i < 0 ? [text] : [text.slice(0, i), text.slice(i + 1)];
}

// An array value repeats its parameter (type=a&type=b); null, '' and [] leave it out.
export function format(names, params = {}) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    for (const one of Array.isArray(v) ? v : [v]) if (one != null && one !== '') q.append(k, one);
  }
  const s = q.toString();
  return '#/' + names.map(encodeURIComponent).join('/') + (s ? '?' + s : '');
}

// The same route with some parameters changed (null removes one; repeated ones stay repeated).
export function withParams(route, changes) {
  const params = {};
  for (const key of new Set(route.params.keys())) params[key] = route.params.getAll(key);
  return format(route.names, { ...params, ...changes });
}

// Realms and domains show their newest events first (what a busy scope's viewer comes for, and
// one request however big it is); an entity reads as its history, oldest first. ?order= overrides.
export function orderOf(route) {
  const asked = route.params.get('order');
  if (asked === 'newest' || asked === 'oldest') return asked;
  if (route.params.has('after')) return 'oldest'; // "after this event" reads forwards
  if (route.params.has('before')) return 'newest';
  return route.names.length <= 2 ? 'newest' : 'oldest';
}

// The event types the view is filtered to (none: every type); a type in the path needs none.
export function typesOf(route) {
  if (route.names.length >= 4) return [];
  // Exactly as given: a type's name may begin or end with spaces (the server keeps any name).
  return [...new Set(route.params.getAll('type').filter((t) => t !== ''))];
}

export const LEVELS = ['realm', 'domain', 'entity', 'type'];

// The consumer groups pages: #/_groups/{realm} and #/_groups/{realm}/{group} (no realm name starts
// with '_').
export const GROUPS = '_groups';

// The event open over the view, and where it is read (GET /{realm}/{domain}/{event id}): a domain
// and the scopes below it fix both; a realm's view and the consumer groups pages fix the realm, and
// `domain` says the event's (null without it, as in addresses written before it: the event is then
// looked up in the realm). null when no event is open, or no realm is in view.
export function eventOf(route) {
  const id = route.params.get('event')?.trim();
  const names = route.names[0] === GROUPS ? route.names.slice(1, 2) : route.names;
  if (!id || !names.length) return null;
  const domain = names.length >= 2 ? names[1] : route.params.get('domain') || null;
  return { realm: names[0], domain, id };
}

// The address of an event (of a list in the view of `route`) open over that view: the event's id,
// and its domain when the view does not fix one.
export function eventHref(route, ev) {
  const fixed = route.names[0] !== GROUPS && route.names.length >= 2;
  return withParams(route, { event: ev.event_id, domain: fixed ? null : ev.domain });
}

// The changes to a route's parameters that close the event (for withParams).
export const NO_EVENT = { event: null, domain: null };
