// Tokens: when the server answers 401, ask for one. It is kept in sessionStorage only, so it
// lasts as long as this browser tab's session and is never written anywhere that outlives it.
// Whatever was refused before the token (lists, the live tail) is asked again once it is given,
// and whatever was read with a token is asked again once it is forgotten: onGiven() draws the
// view again.

import { onTokenNeeded, token } from './api.js';
import { $, announce } from './dom.js';

export function setupAuth(onGiven = () => {}) {
  const dialog = $('#token-dialog');
  const input = $('#token-input');
  const reason = $('#token-reason');
  const button = $('#token-button');
  const refresh = () => {
    const set = Boolean(token.get());
    button.textContent = set ? 'Token set' : 'Token';
    button.setAttribute('aria-label', set ? 'Token set: change or forget it' : 'Set a token');
    $('#token-forget').hidden = !set;
  };

  // Opens the dialog; resolves true when a token was given.
  const ask = (why) => new Promise((resolve) => {
    reason.textContent = why;
    input.value = '';
    dialog.returnValue = '';
    dialog.addEventListener('close', () => {
      const value = input.value.trim();
      input.value = '';
      const forgotten = dialog.returnValue === 'forget';
      if (forgotten) { token.clear(); announce('Token forgotten'); }
      const given = dialog.returnValue === 'save' && value !== '';
      if (given) { token.set(value); announce('Token saved for this session'); }
      refresh();
      // Before resolve(): requests waiting on this dialog then find their view aborted and stop,
      // rather than retrying alongside the new view's own. A forgotten token draws the view again
      // too: what was read with it (the lists, a live tail still streaming) is read without it.
      if (given || forgotten) onGiven();
      resolve(given);
    }, { once: true });
    dialog.showModal();
    input.focus();
  });

  // Enter means "use this token" (the form's first button is "Forget token").
  input.addEventListener('keydown', (e) => { if (e.key === 'Enter') { e.preventDefault(); dialog.close('save'); } });
  onTokenNeeded(ask);
  button.addEventListener('click', () => ask(token.get()
    ? 'A token is set for this session. Give another one, or forget it.'
    : 'Give the bearer token that perhap should send with every request.'));
  refresh();
}
