// The newest event of the scope in view (of its types, when filtered): one read, newest first,
// limit 1, which the server answers with one index probe however big the scope is.
//
// The live tail starts right after it (so it shows what happens from now on, without replaying
// history; with types, after the whole scope's newest event: see tailStart), and the event list
// shows how far the scope goes. The live tail moves it on as events arrive ('change'), so both
// stay current without asking again.

import { read } from './api.js';

export class ScopeHead extends EventTarget {
  // resumeAfter: an event a tail of this scope already showed (the view drawn again after a token
  // was given): the new tail starts right after it instead of after the newest event.
  constructor(levels, types, resumeAfter = null) {
    super();
    this.levels = levels;
    this.types = types;
    this.event = null; // the newest event known; null for an empty scope (or before the read)
    this.loading = null;
    this.resumeAfter = resumeAfter;
  }

  // Resolves with the newest event (or null) once read; every caller shares the one request.
  load(signal) {
    this.loading ??= read(this.levels, { newest: true, limit: 1, types: this.types, signal }).then((page) => {
      this.event = page.events[0] ?? null;
      this.dispatchEvent(new Event('change'));
      return this.event;
    }, (e) => { this.loading = null; throw e; });
    return this.loading;
  }

  // Where the live tail starts, "now": {following: id} or {afterPosition: n} (null: an empty scope).
  // Without types, right after the head above. With types, after the newest position of the whole
  // scope, whatever its type, read without them (one more probe): a stream with no start replays
  // the whole scope to find the types' first event (a type not seen yet meant every one of 100,000
  // events read for nothing), a stream `following` the types' newest event goes through everything
  // after it, and `following` an event of another type is a 404 in a typed scope.
  async tailStart(signal) {
    const resume = this.resumeAfter;
    if (resume) return this.types.length ? { afterPosition: resume.position } : { following: resume.event_id };
    if (!this.types.length) return { following: (await this.load(signal))?.event_id ?? null };
    const page = await read(this.levels, { newest: true, limit: 1, signal });
    return { afterPosition: page.events[0]?.position ?? null };
  }

  // An event the live stream delivered: the stream starts after the head and runs in order.
  // (A resumed tail delivers what it missed, older than the newest the list read: never backwards.)
  advance(event) {
    if (this.event && event.position <= this.event.position) return;
    this.event = event;
    this.dispatchEvent(new Event('change'));
  }
}
