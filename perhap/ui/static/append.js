// The form that appends one event. The JSON is checked in the browser before anything is sent,
// and the server's answer (or its problem+json error) is told in plain words.

import { append, explain, parseJSON, stringify } from './api.js';
import { h, shortId } from './dom.js';
import { format, LEVELS } from './route.js';

const UUID = /^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$/i;
const MAX_NAME_BYTES = 255;

// The server's rules for a name (check_name in perhap/model.py), so that the form never sends what
// it would refuse. "." and ".." matter most: the browser resolves them in the URL like a folder
// path (written %2E%2E too), so the event would go to another address and the answer would be
// about something else. The app checks an address's names with it too (see badName in app.js).
export function nameProblem(v, level) {
  if (!v) return 'is required';
  if (v === '.' || v === '..') return `cannot be “${v}”: in a web address it means ${v === '.' ? 'this level' : 'the level above'}`;
  if (v.includes('/')) return 'cannot contain “/”';
  if (v === 'keys') return 'cannot be “keys” (reserved)';
  if (level === 'realm' && v.startsWith('_')) return 'cannot start with “_” (reserved for the server’s own pages)';
  if (/[\u0000-\u001f\u007f-\u009f]/.test(v)) return 'cannot contain control characters (tabs, line breaks…)';
  if (/\p{Cs}/u.test(v)) return 'is not valid text (a lone surrogate)';
  const bytes = new TextEncoder().encode(v).length;
  if (bytes > MAX_NAME_BYTES) return `is too long: at most ${MAX_NAME_BYTES} bytes of UTF-8, this one has ${bytes}`;
  return '';
}

export function renderAppend(container, names) {
  const field = (id, label, attrs = {}, hint) => {
    const input = h('input', { id, name: id, autocomplete: 'off', spellcheck: 'false', ...attrs, 'aria-describedby': hint ? `${id}-hint` : null });
    return { input, el: h('div', { class: 'field' }, h('label', { for: id }, label), input, hint ? h('p', { class: 'hint', id: `${id}-hint` }, hint) : null) };
  };
  const where = LEVELS.map((level, i) => field(`append-${level}`, level[0].toUpperCase() + level.slice(1), { required: true, value: names[i] ?? '' }));
  const eventText = h('textarea', { id: 'append-event', name: 'event', rows: 6, spellcheck: 'false', required: true, 'aria-describedby': 'append-event-check' }, '{\n  \n}');
  const eventCheck = h('p', { class: 'hint', id: 'append-event-check', 'aria-live': 'polite' }, 'Any JSON value: an object, array, string, number, true, false or null.');
  const metaText = h('textarea', { id: 'append-meta', name: 'meta', rows: 2, spellcheck: 'false', placeholder: '{"correlation_id": "…"}', 'aria-describedby': 'append-meta-check' });
  const metaCheck = h('p', { class: 'hint', id: 'append-meta-check', 'aria-live': 'polite' }, 'Optional: a JSON object stored with the event.');
  const expected = field('append-expected', 'Expected version', { inputmode: 'numeric', placeholder: 'any', pattern: '-?[0-9]+' },
    'Optional: store only if the entity is at this version (-1: a new entity).');
  const eventId = field('append-id', 'Event id', { placeholder: 'made by the server' }, 'Optional UUID: retrying with the same id never stores twice.');
  const result = h('div', { class: 'result', id: 'append-result', role: 'status', 'aria-live': 'polite' });
  const submit = h('button', { type: 'submit', class: 'primary' }, 'Append event');

  const form = h('form', { class: 'append-form', novalidate: true, 'aria-label': 'Append an event' },
    h('div', { class: 'grid4' }, where.map((f) => f.el)),
    h('div', { class: 'field' }, h('label', { for: 'append-event' }, 'Event (JSON)'), eventText, eventCheck),
    h('div', { class: 'field' }, h('label', { for: 'append-meta' }, 'Meta (JSON object)'), metaText, metaCheck),
    h('div', { class: 'grid2' }, expected.el, eventId.el),
    h('div', { class: 'form-actions' }, submit, h('span', { class: 'hint' }, 'Ctrl+Enter sends')),
    result);
  container.replaceChildren(form);

  // Check a JSON text as it is typed; returns the parsed value, or undefined (message shown).
  const check = (area, message, { optional = false, object = false, okText } = {}) => {
    const text = area.value.trim();
    let error = '';
    if (!text) error = optional ? '' : 'Required: type a JSON value, e.g. {"total": 42}.';
    else {
      try {
        const value = parseJSON(text);
        if (object && (value === null || typeof value !== 'object' || Array.isArray(value))) error = 'Meta must be a JSON object: {…}.';
      } catch (e) {
        error = `Not valid JSON: ${e.message}`;
      }
    }
    area.setAttribute('aria-invalid', String(Boolean(error)));
    message.classList.toggle('bad', Boolean(error));
    message.textContent = error || okText || message.dataset.help;
    return !error;
  };
  eventCheck.dataset.help = eventCheck.textContent;
  metaCheck.dataset.help = metaCheck.textContent;
  eventText.addEventListener('input', () => check(eventText, eventCheck, { okText: 'Valid JSON.' }));
  metaText.addEventListener('input', () => check(metaText, metaCheck, { optional: true, object: true }));
  form.addEventListener('keydown', (e) => { if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) { e.preventDefault(); form.requestSubmit(); } });

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const values = where.map((f) => f.input.value);
    const problems = [];
    where.forEach((f, i) => {
      const v = values[i];
      const bad = nameProblem(v, LEVELS[i]);
      f.input.setAttribute('aria-invalid', String(Boolean(bad)));
      if (bad) problems.push(`${LEVELS[i]} ${bad}`);
    });
    if (!check(eventText, eventCheck, { okText: 'Valid JSON.' })) problems.push('the event is not valid JSON');
    if (!check(metaText, metaCheck, { optional: true, object: true })) problems.push('meta is not a JSON object');
    const ev = expected.input.value.trim();
    const badVersion = ev !== '' && !(/^-?[0-9]+$/.test(ev) && Number(ev) >= -1);
    expected.input.setAttribute('aria-invalid', String(badVersion));
    if (badVersion) problems.push('expected version must be a whole number, -1 or more');
    const id = eventId.input.value.trim();
    eventId.input.setAttribute('aria-invalid', String(Boolean(id && !UUID.test(id))));
    if (id && !UUID.test(id)) problems.push('the event id must be a UUID');
    if (problems.length) {
      show('bad', `Not sent: ${problems.join('; ')}.`);
      form.querySelector('[aria-invalid="true"]')?.focus();
      return;
    }
    submit.disabled = true;
    show('busy', 'Sending…');
    try {
      const { status, data } = await append(...values, { eventText: eventText.value.trim(), metaText: metaText.value.trim(), expectedVersion: ev && BigInt(ev).toString(), eventId: id });
      const href = format(values.slice(0, 2), { event: data.event_id });
      const open = h('a', { href }, `open event ${shortId(data.event_id)}`);
      if (status === 201) show('ok', `Stored: version ${data.version} of ${values[2]}, at ${data.timestamp}. `, open, '.');
      else show('ok', `Already stored earlier with this event id (version ${data.version}); nothing new was written. `, open, '.');
      expected.input.value = '';
    } catch (err) {
      const raw = err.body ? h('details', { class: 'raw' }, h('summary', {}, `Server's answer (HTTP ${err.status})`), h('pre', { class: 'mono' }, stringify(err.body, 2))) : null;
      show('bad', explain(err), raw);
    } finally {
      submit.disabled = false;
    }
  });

  function show(kind, ...content) {
    result.dataset.kind = kind;
    result.replaceChildren(h('p', {}, ...content.filter((c) => !(c instanceof HTMLDetailsElement))), ...content.filter((c) => c instanceof HTMLDetailsElement));
  }
  return form;
}
