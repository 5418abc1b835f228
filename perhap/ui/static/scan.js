// Where a scope ends, found with the only cursor the API has: `following`, forwards.
//
// The API reads a scope oldest first and has no "last event" or backwards read. Two features need
// the end: a live tail that starts now (a stream without `following` replays the whole scope),
// and "newest first". So the UI skips forward in pages of CHUNK events, keeping nothing but each
// page's first cursor and size. That list of chunks lets "newest first" read backwards one chunk
// at a time, and the index is kept for the browser session, so a later visit only reads what was
// added since. Memory stays small (one entry per CHUNK events); time grows with the scope's size
// (about 2 s for 100,000 events on a laptop), which is why the live tail asks before skipping
// more than AUTO_SKIP events, and why the event list is oldest first unless asked otherwise.

import { read } from './api.js';

export const CHUNK = 1000;
export const AUTO_SKIP = 20_000;

const indexes = new Map();

export function indexOf(levels, type) {
  const key = JSON.stringify([levels, type || null]);
  if (!indexes.has(key)) indexes.set(key, new ScopeIndex(levels, type));
  return indexes.get(key);
}

// Dispatches 'end' each time a read reaches the end, so every view waiting for it can go on.
class ScopeIndex extends EventTarget {
  constructor(levels, type) {
    super();
    this.levels = levels;
    this.type = type || undefined;
    this.chunks = []; // {following, count}: read(following, limit: count) gives that chunk again
    this.end = null; // id of the last event seen, the cursor a live stream starts from
    this.total = 0;
    this.atEnd = false;
    this.step = null; // the page being read, shared by every caller
  }

  // Read forward until the end. Resolves true at the end, false when `budget` events were read
  // first (call again to go on). onProgress(total) is called after each page.
  async extend({ budget = Infinity, signal, onProgress = () => {} } = {}) {
    let skipped = 0;
    this.atEnd = false;
    while (!this.atEnd) {
      if (skipped >= budget) return false;
      signal?.throwIfAborted();
      this.step ??= this.readPage().finally(() => { this.step = null; });
      skipped += await this.step;
      onProgress(this.total);
    }
    return true;
  }

  async readPage() {
    const page = await read(this.levels, { following: this.end, limit: CHUNK, type: this.type });
    const n = page.events.length;
    if (n) {
      this.chunks.push({ following: this.end, count: n });
      this.end = page.events[n - 1].event_id;
      this.total += n;
    }
    this.atEnd = page.next == null;
    if (this.atEnd) this.dispatchEvent(new Event('end'));
    return n;
  }

  // An event the live stream delivered. The stream starts at `end` and delivers the scope in
  // order without gaps, so the index can follow it and stays at the end for free ('grow').
  advance(event) {
    if (this.step || !this.atEnd) return; // a read is under way: it will see the event itself
    const last = this.chunks.at(-1);
    if (last && last.count < CHUNK) last.count++;
    else this.chunks.push({ following: this.end, count: 1 });
    this.end = event.event_id;
    this.total++;
    this.dispatchEvent(new Event('grow'));
  }

  // Pages of events newest first, from the chunks known so far.
  backwards() {
    const index = this;
    let chunk = this.chunks.length - 1;
    let buffer = [];
    return {
      get more() { return buffer.length > 0 || chunk >= 0; },
      async next(n, signal) {
        while (buffer.length < n && chunk >= 0) {
          const { following, count } = index.chunks[chunk--];
          const page = await read(index.levels, { following, limit: count, type: index.type, signal });
          buffer = buffer.concat(page.events.reverse());
        }
        return buffer.splice(0, n);
      },
    };
  }
}
