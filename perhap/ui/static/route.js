// Where the user is, kept in the URL's hash so every view can be bookmarked and shared:
//   #/realm/domain/entity/type?order=newest&type=placed&event=<event id>
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

export function format(names, params = {}) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v != null && v !== '') q.set(k, v);
  const s = q.toString();
  return '#/' + names.map(encodeURIComponent).join('/') + (s ? '?' + s : '');
}

// The same route with some parameters changed (null removes one).
export function withParams(route, changes) {
  const params = Object.fromEntries(route.params);
  return format(route.names, { ...params, ...changes });
}

export const LEVELS = ['realm', 'domain', 'entity', 'type'];
