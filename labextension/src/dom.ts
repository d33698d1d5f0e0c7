// A tiny DOM builder and the formatting the sidebar's widgets share.

export type Attrs = {
  [key: string]: string | boolean | ((ev: any) => void);
};

/** An element with attributes (`onclick`… become listeners) and children: enough for
 * forms, lists and tables without React. */
export function h(
  tag: string,
  attrs: Attrs = {},
  ...children: (Node | string | null | undefined)[]
): HTMLElement {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (typeof value === 'function') {
      el.addEventListener(key.replace(/^on/, ''), value);
    } else if (typeof value === 'boolean') {
      if (value) {
        el.setAttribute(key, '');
      }
    } else {
      el.setAttribute(key, value);
    }
  }
  for (const child of children) {
    if (child !== null && child !== undefined) {
      el.append(child);
    }
  }
  return el;
}

/** Text that may be long: one line, cut with an ellipsis by CSS, whole in the tooltip. */
export function clipped(text: string, cls = ''): HTMLElement {
  return h('span', { class: `cb-clip ${cls}`.trim(), title: text }, text);
}

/** Money as the widget and the CLI write it (cloudbutton_executor/units.py):
 * "$0", "< $0.0001", "$0.0002", "$0.0123", "$0.50", "$1,234.50". */
export function formatUsd(usd: number | null | undefined): string {
  if (usd === null || usd === undefined || !isFinite(usd)) {
    return '—';
  }
  if (usd <= 0) {
    return '$0';
  }
  if (usd < 0.0001) {
    return '< $0.0001';
  }
  if (usd < 1) {
    const text = usd.toFixed(4).replace(/0+$/, '');
    const [whole, frac] = text.split('.');
    return `$${whole}.${(frac ?? '').padEnd(2, '0')}`;
  }
  // toFixed rounds the exact binary value, as Python's format does (toLocaleString
  // rounds the shortest decimal instead, and differs on values like 1.015).
  const [whole, cents] = usd.toFixed(2).split('.');
  return `$${whole.replace(/\B(?=(\d{3})+(?!\d))/g, ',')}.${cents}`;
}

export function formatDuration(s: number | null | undefined): string {
  if (s === null || s === undefined || !isFinite(s)) {
    return '';
  }
  if (s < 10) {
    return `${s.toFixed(2)} s`;
  }
  if (s < 60) {
    return `${s.toFixed(1)} s`;
  }
  const m = Math.floor(s / 60);
  return m < 60
    ? `${m} min ${Math.round(s % 60)} s`
    : `${Math.floor(m / 60)} h ${m % 60} min`;
}

/** "12/40 done · 3 failed · 25 cancelled": a cancelled item is never counted as failed. */
export function countsText(job: {
  n_items: number;
  counts: { done: number; failed: number; cancelled: number; lost: number };
}): string {
  const c = job.counts;
  return [
    `${c.done}/${job.n_items} done`,
    c.failed ? `${c.failed} failed` : '',
    c.cancelled ? `${c.cancelled} cancelled` : '',
    c.lost ? `${c.lost} lost` : ''
  ]
    .filter(Boolean)
    .join(' · ');
}

export function basename(path: string | null | undefined): string {
  return path ? path.split('/').pop() || path : '';
}

/** A message line that keeps its text until `set` is called again. */
export class MessageLine {
  constructor(cls: string) {
    this.node = h('div', { class: `cb-message ${cls}` });
    this._cls = cls;
  }

  set(text: string, kind: '' | 'info' | 'error' | 'ok' = ''): void {
    this.node.textContent = text;
    this.node.className = `cb-message ${this._cls}${kind ? ' cb-' + kind : ''}`;
  }

  readonly node: HTMLElement;
  private _cls: string;
}
