// The event rate of the scope in view over the last minutes, from the live stream: inline SVG
// bars, one per BUCKET seconds, placed by each event's commit timestamp (so events caught up after
// a reconnect land where they happened, not where they arrived).

import { h } from './dom.js';

const BUCKET = 10; // seconds
const BUCKETS = 30; // 5 minutes
const W = 300, H = 56;

export function rateChart() {
  const counts = new Map(); // bucket number (epoch seconds / BUCKET) -> events
  const svg = h('svg:svg', { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none', 'aria-hidden': 'true', focusable: 'false' });
  const figure = h('figure', { class: 'chart', role: 'img' },
    svg,
    h('figcaption', { class: 'chart-axis' }, h('span', {}, `${(BUCKET * BUCKETS) / 60} min ago`), h('span', { class: 'chart-peak' }), h('span', {}, 'now')));
  const rateText = h('span', { class: 'rate' }, '0 /s');

  const bucketOf = (ms) => Math.floor(ms / 1000 / BUCKET);
  const draw = () => {
    const now = bucketOf(Date.now());
    for (const b of counts.keys()) if (b <= now - BUCKETS) counts.delete(b);
    const values = Array.from({ length: BUCKETS }, (_, i) => counts.get(now - BUCKETS + 1 + i) || 0);
    const peak = Math.max(...values);
    const total = values.reduce((a, b) => a + b, 0);
    const bw = W / BUCKETS;
    svg.replaceChildren(h('svg:line', { x1: 0, y1: H - 0.5, x2: W, y2: H - 0.5, class: 'chart-base' }),
      ...values.map((v, i) => {
        const bh = peak ? Math.max(v ? 2 : 0, (v / peak) * (H - 4)) : 0;
        return h('svg:rect', { x: i * bw + 1, y: H - bh, width: bw - 2, height: bh, class: i === BUCKETS - 1 ? 'bar now' : 'bar' });
      }));
    // The current rate: the last full bucket plus the running one, per second.
    const elapsed = (Date.now() / 1000) % BUCKET;
    const recent = values[BUCKETS - 1] + values[BUCKETS - 2];
    const rate = recent / (BUCKET + elapsed);
    rateText.textContent = `${rate < 10 ? rate.toFixed(1) : Math.round(rate)} /s`;
    figure.querySelector('.chart-peak').textContent = peak ? `peak ${peak} per ${BUCKET} s` : 'no events yet';
    figure.setAttribute('aria-label', `Event rate: ${total} events in the last ${(BUCKET * BUCKETS) / 60} minutes, ` +
      `peak ${peak} per ${BUCKET} seconds, now about ${rateText.textContent.replace('/s', 'per second')}`);
  };
  const timer = setInterval(draw, 2000);
  draw();
  return {
    figure,
    rateText,
    add(timestamp) {
      const ms = Math.min(Date.parse(timestamp) || Date.now(), Date.now()); // a fast server clock counts as now
      const b = bucketOf(ms);
      counts.set(b, (counts.get(b) || 0) + 1);
    },
    draw,
    stop: () => clearInterval(timer),
  };
}
