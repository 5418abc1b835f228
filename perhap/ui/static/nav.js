// The sidebar: the names one level below the scope in view (realms, domains, entities or event
// types), from the keys endpoints, a page at a time, with a prefix filter that asks the server.
// A domain may hold 100,000 entities, so nothing here ever lists a whole level.

import { explain, keys } from './api.js';
import { h, number } from './dom.js';
import { format } from './route.js';

const PAGE = 200;
const TITLES = ['Realms', 'Domains', 'Entities', 'Event types'];
const SINGULAR = ['realm', 'domain', 'entity', 'event type'];

// levels: the scope whose children are listed; current: the child in view (highlighted), if any.
export function renderNav(root, levels, current, { order } = {}) {
  const depth = levels.length;
  const abort = new AbortController();
  const list = h('ul', { class: 'keys', 'aria-labelledby': 'nav-title' });
  const status = h('p', { class: 'nav-status', role: 'status' });
  const more = h('button', { type: 'button', class: 'more', hidden: true }, 'Load more');
  const filter = h('input', {
    id: 'key-filter', type: 'search', autocomplete: 'off', spellcheck: 'false',
    placeholder: 'Filter by prefix', 'aria-describedby': 'filter-hint',
  });
  root.replaceChildren(
    h('h2', { id: 'nav-title', class: 'nav-title' }, TITLES[depth],
      depth ? h('span', { class: 'nav-parent' }, ` in ${levels[depth - 1]}`) : ''),
    h('div', { class: 'filter' },
      h('label', { for: 'key-filter', class: 'sr-only' }, `Filter ${TITLES[depth].toLowerCase()} by prefix`),
      filter,
      h('kbd', { class: 'hint', 'aria-hidden': 'true' }, '/')),
    h('p', { id: 'filter-hint', class: 'sr-only' }, 'Names starting with this text, found by the server. Press slash to come here.'),
    list, more, status);

  let after = null; // cursor of the next page
  let prefix = '';
  let shown = 0;
  let generation = 0; // a newer filter makes older answers stale

  // While a page loads, the button stays enabled (Chromium drops the focus of a button that gets
  // disabled, so a second Enter would do nothing) but busy: its clicks are ignored until it ends.
  async function load() {
    const mine = generation;
    const first = list.children.length;
    more.setAttribute('aria-busy', 'true');
    status.textContent = 'Loading…';
    try {
      const page = await keys(levels, { after: after ?? (prefix ? before(prefix) : undefined), limit: PAGE, signal: abort.signal });
      if (mine !== generation) return;
      let ended = page.next == null;
      for (const key of page.keys) {
        if (prefix && !key.startsWith(prefix)) {
          if (!shown && key.startsWith(before(prefix).slice(0, -2))) continue; // below the prefix
          ended = true; // sorted: past the names with this prefix
          break;
        }
        const href = format([...levels, key], { order });
        list.append(h('li', {}, h('a', { href, 'aria-current': key === current ? 'page' : null, title: key }, key)));
        shown++;
      }
      after = page.next;
      // The last page: the focus goes from the button, now hidden, to the first name it loaded (the last, if none).
      if (ended && document.activeElement === more) (list.children[first] ?? list.lastElementChild)?.querySelector('a')?.focus();
      more.hidden = ended;
      const what = shown === 1 ? SINGULAR[depth] : TITLES[depth].toLowerCase();
      status.textContent = shown
        ? `${number(shown)} ${what}${ended ? '' : ' shown, more to load'}${prefix ? ` starting with “${prefix}”` : ''}`
        : prefix ? `No ${TITLES[depth].toLowerCase()} start with “${prefix}”.` : `No ${TITLES[depth].toLowerCase()} yet.`;
      list.querySelector('[aria-current]')?.scrollIntoView({ block: 'nearest' });
    } catch (e) {
      if (e.name === 'AbortError') return;
      status.textContent = explain(e);
    } finally {
      if (mine === generation) more.removeAttribute('aria-busy'); // else the newer load's
    }
  }

  let timer;
  filter.addEventListener('input', () => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      prefix = filter.value;
      generation++;
      after = null;
      shown = 0;
      list.replaceChildren();
      load();
    }, 200);
  });
  more.addEventListener('click', () => { if (more.getAttribute('aria-busy') !== 'true') load(); });
  load();
  return () => { abort.abort(); clearTimeout(timer); };
}

// The greatest name sorting before every name that starts with prefix: `after` is exclusive, so
// listing after it starts exactly at the prefix. ('ord' -> 'orc' + U+10FFFF, by code point.)
function before(prefix) {
  const chars = [...prefix];
  let cp = chars.pop().codePointAt(0) - 1;
  if (cp >= 0xd800 && cp <= 0xdfff) cp = 0xd7ff; // no lone surrogates in a URL
  return chars.join('') + String.fromCodePoint(Math.max(cp, 0)) + '\u{10FFFF}';
}
