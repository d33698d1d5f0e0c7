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

/** `x.toFixed(digits)` for x >= 0, but an exact tie goes to the even digit, as Python's
 * format does (toFixed goes up): 0.125 to two places is "0.12" in both. Thirty more places
 * of the exact binary value tell a true tie from a near one. */
export function toFixedEven(x: number, digits: number): string {
  const up = x.toFixed(digits);
  const exact = x.toFixed(digits + 30);
  if (x < 0 || exact.slice(-30) !== '5' + '0'.repeat(29)) {
    return up;
  }
  const down = exact.slice(0, -30).replace(/\.$/, '');
  return Number(down[down.length - 1]) % 2 === 0 ? down : up;
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
    const text = toFixedEven(usd, 4).replace(/0+$/, '');
    const [whole, frac] = text.split('.');
    return `$${whole}.${(frac ?? '').padEnd(2, '0')}`;
  }
  // Rounding the exact binary value, as Python's format does (toLocaleString rounds the
  // shortest decimal instead, and differs on values like 1.015).
  const [whole, cents] = toFixedEven(usd, 2).split('.');
  return `$${whole.replace(/\B(?=(\d{3})+(?!\d))/g, ',')}.${cents}`;
}

/** Seconds as the widget writes them (cloudbutton_magic/widget.py fmt_seconds):
 * "0.25 s", "13.6 s", "2m05s", "1h02m". */
export function formatDuration(s: number | null | undefined): string {
  if (s === null || s === undefined || !isFinite(s)) {
    return '';
  }
  if (s < 10) {
    return `${toFixedEven(s, 2)} s`;
  }
  if (s < 60) {
    return `${toFixedEven(s, 1)} s`;
  }
  const whole = Math.floor(s);
  const m = Math.floor(whole / 60);
  const pad = (n: number) => String(n).padStart(2, '0');
  return m < 60
    ? `${m}m${pad(whole % 60)}s`
    : `${Math.floor(m / 60)}h${pad(m % 60)}m`;
}

/** "12/40 done · 3 failed · 25 cancelled": a cancelled item is never counted as failed. */
export function countsText(job: {
  n_items: number;
  counts: {
    done: number;
    failed: number;
    cancelled: number;
    lost: number;
    cached?: number;
  };
}): string {
  const c = job.counts;
  return [
    c.cached ? `${c.cached} cached` : '',
    `${c.done}/${job.n_items} done`,
    c.failed ? `${c.failed} failed` : '',
    c.cancelled ? `${c.cancelled} cancelled` : '',
    c.lost ? `${c.lost} lost` : ''
  ]
    .filter(Boolean)
    .join(' · ');
}

/** The cost meter: spent so far, the projected total while it runs, and its budget. */
export function costText(job: {
  cost_usd: number;
  projected_usd?: number;
  budget_usd?: number | null;
  finished: boolean;
}): string {
  const parts = [`${formatUsd(job.cost_usd)} spent`];
  if (!job.finished && job.projected_usd !== undefined) {
    parts.push(`${formatUsd(job.projected_usd)} projected`);
  }
  if (job.budget_usd !== null && job.budget_usd !== undefined) {
    parts.push(`budget ${formatUsd(job.budget_usd)}`);
  }
  return parts.join(' · ');
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
