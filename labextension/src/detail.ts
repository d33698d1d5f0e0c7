// One job in the sidebar, in place of the list: head with a back control, the timeline
// drawn like the widget's (same phases and colours, seconds since the job started),
// failures and a task table that fits the sidebar's width.
import { ISignal, Signal } from '@lumino/signaling';
import { Widget } from '@lumino/widgets';
import { IJobDetail, IPhases, ITaskDetail } from './api';
import {
  basename,
  clipped,
  costText,
  countsText,
  formatDuration,
  h
} from './dom';

const SVG = 'http://www.w3.org/2000/svg';
// Where the time went (phases.py PHASES; the widget's PHASE_COLOURS).
const TIME_PHASES: [string, string, string][] = [
  ['invoke', 'invoke/queue', '#b0b0b0'],
  ['cold_start', 'cold start', '#4d4d4d'],
  ['download', 'function + input download', '#ff9f1c'],
  ['compute', 'compute', '#2ca02c'],
  ['upload', 'result upload', '#8e6bbf']
];

/** A thin stacked bar of the phases, each titled with its label, seconds and share. */
export function phasesBar(phases: IPhases | undefined): HTMLElement | null {
  if (!phases || !phases.total_s) {
    return null;
  }
  const total = phases.total_s;
  const segs = TIME_PHASES.filter(
    ([key]) => (phases.seconds[key] ?? 0) > 0
  ).map(([key, label, colour]) => {
    const s = phases.seconds[key];
    return h('div', {
      class: `cb-phase cb-phase-${key}`,
      title: `${label}: ${s.toFixed(2)} s (${Math.round((100 * s) / total)}%)`,
      style: `width: ${((100 * s) / total).toFixed(3)}%; background: ${colour}`
    });
  });
  const compute = (phases.seconds['compute'] ?? 0) / total;
  return h(
    'div',
    { class: 'cb-phases' },
    clipped(
      `Where the time went: compute ${Math.round(100 * compute)}% of ` +
        `${phases.tasks} tasks' ${total.toFixed(1)} s`,
      'cb-phases-text'
    ),
    h('div', { class: 'cb-phase-bar' }, ...segs)
  );
}
// The widget's phases (kernel_magic/cloudbutton_magic/plots.py SEGMENTS).
const PHASES: [string, string, string, string][] = [
  ['host_submit', 'worker_start', 'queue/invoke', '#b0b0b0'],
  ['worker_start', 'setup_done', 'setup', '#ff9f1c'],
  ['setup_done', 'compute_done', 'compute', '#2ca02c'],
  ['compute_done', 'result_stored', 'return', '#8e6bbf']
];
const FAILED = '#d62728';
const MAX_ROWS = 300;

export class JobDetail extends Widget {
  constructor() {
    super();
    this.addClass('cb-detail');
  }

  /** Emitted when the user goes back to the list. */
  get back(): ISignal<this, void> {
    return this._back;
  }

  /** Emitted with the job id when the user asks to re-run its failed items. */
  get rerun(): ISignal<this, string> {
    return this._rerun;
  }

  get jobId(): string | null {
    return this._jobId;
  }

  /** Show `jobId` (its data follows through `render`). */
  open(jobId: string): void {
    this._jobId = jobId;
    this._selected = null;
    this.node.replaceChildren(
      this._head(jobId, ''),
      h('div', { class: 'cb-hint' }, 'Loading…')
    );
  }

  close(): void {
    this._jobId = null;
  }

  showError(message: string): void {
    if (this._jobId) {
      this.node.replaceChildren(
        this._head(this._jobId, ''),
        h('div', { class: 'cb-error' }, message)
      );
    }
  }

  render(job: IJobDetail): void {
    if (job.job_id !== this._jobId) {
      return;
    }
    const counts = countsText(job);
    const what = basename(job.notebook) || job.function || '';
    const failures = job.failures
      .slice(0, 20)
      .map(f =>
        h(
          'details',
          { class: 'cb-failure' },
          h('summary', {}, clipped(`item ${f.i}: ${f.type}: ${f.message}`)),
          h('pre', {}, f.traceback || f.message),
          f.stdout ? h('pre', { class: 'cb-stdout' }, f.stdout) : null
        )
      );
    this.node.replaceChildren(
      this._head(job.job_id, job.state),
      h(
        'div',
        { class: 'cb-detail-meta' },
        clipped(`${what} · ${job.backend}`, 'cb-job-meta'),
        clipped(counts, 'cb-detail-counts'),
        clipped(
          `${job.n_items} items in ${job.tasks} tasks · ${job.memory_mb ?? '?'} MB`,
          'cb-detail-figures'
        ),
        clipped(
          `${formatDuration(job.duration_s)} · ${costText(job)} at Lambda prices`,
          'cb-detail-cost'
        ),
        job.stopped ? clipped(job.stopped, 'cb-detail-stopped') : null,
        job.rerun_by ? clipped(job.rerun_by.text, 'cb-detail-rerun') : null,
        job.rerun_of
          ? clipped(`re-run of ${job.rerun_of}`, 'cb-detail-rerun-of')
          : null
      ),
      ...[phasesBar(job.phases), this._rerunButton(job)].filter(
        (e): e is HTMLElement => e !== null
      ),
      this._timeline(job),
      this._taskBox,
      ...(failures.length
        ? [h('h4', {}, `Failures (${job.failures.length})`), ...failures]
        : []),
      this._table(job)
    );
    // The panel refreshes every few seconds: the task shown stays shown, updated.
    const selected = this._selected;
    this._showTask(
      job,
      selected ? job.tasks_detail.find(t => t.task === selected) : undefined
    );
  }

  private _rerunButton(job: IJobDetail): HTMLElement | null {
    if (!job.finished || !job.counts.failed) {
      return null;
    }
    return h(
      'button',
      {
        class: 'jp-mod-styled jp-mod-accept cb-rerun-failed',
        title:
          'Run the failed items again, into the same results: %cloud rerun in ' +
          'the current notebook (the kernel that ran the job)',
        onclick: () => this._rerun.emit(job.job_id)
      },
      `Re-run ${job.counts.failed} failed`
    );
  }

  /** What one task did: its items, state, attempts, start, phases, and its items' failures
   * (traceback and stdout). Shown when its bar or its row is clicked. */
  private _showTask(job: IJobDetail, t: ITaskDetail | undefined): void {
    if (!t) {
      this._taskBox.replaceChildren();
      return;
    }
    this._selected = t.task;
    const phase = (a: string, b: string, label: string) => {
      const ta = t.t[a];
      const tb = t.t[b];
      return ta === null || tb === null || ta === undefined || tb === undefined
        ? null
        : h('li', {}, `${label}: ${(tb - ta).toFixed(3)} s`);
    };
    const [a, b] = t.items;
    const failures = job.failures
      .filter(f => f.i >= a && f.i < b)
      .map(f =>
        h(
          'details',
          { class: 'cb-failure', open: true },
          h('summary', {}, clipped(`item ${f.i}: ${f.type}: ${f.message}`)),
          h('pre', {}, f.traceback || f.message),
          f.stdout ? h('pre', { class: 'cb-stdout' }, f.stdout) : null
        )
      );
    const failed = new Set(failures.length ? job.failures.map(f => f.i) : []);
    const items = (t.item_detail ?? []).map(d =>
      h(
        'div',
        { class: 'cb-task-item', 'data-item': String(d.i) },
        clipped(
          `item ${d.i} input: ${d.input ?? '(not kept: beyond the first inputs)'}`,
          'cb-task-input'
        ),
        // A failed item's stdout is shown with its traceback below.
        d.stdout && !failed.has(d.i)
          ? h('pre', { class: 'cb-stdout cb-task-stdout' }, d.stdout)
          : null
      )
    );
    const facts = [
      `task ${t.task}`,
      `items ${itemsText(t)}`,
      t.state + (t.infra ? ` (${t.infra.kind})` : ''),
      `${t.attempt + 1} attempt${t.attempt ? 's' : ''}`,
      t.cold_start === null ? '' : t.cold_start ? 'cold start' : 'warm start',
      t.peak_mem_mb ? `${Math.round(t.peak_mem_mb)} MB peak` : ''
    ].filter(Boolean);
    this._taskBox.replaceChildren(
      h(
        'div',
        { class: 'cb-task-head' },
        clipped(facts.join(' · '), 'cb-task-facts'),
        h(
          'button',
          {
            class: 'jp-mod-styled cb-task-close',
            title: 'Close the task detail',
            onclick: () => {
              this._selected = null;
              this._showTask(job, undefined);
            }
          },
          '×'
        )
      ),
      h(
        'ul',
        { class: 'cb-task-phases' },
        ...PHASES.map(([from, to, label]) => phase(from, to, label))
      ),
      ...(t.infra
        ? [h('pre', { class: 'cb-task-infra' }, t.infra.message)]
        : []),
      ...items,
      ...failures
    );
  }

  private _head(jobId: string, state: string): HTMLElement {
    return h(
      'div',
      { class: 'cb-detail-head' },
      h(
        'button',
        {
          class: 'jp-mod-styled cb-detail-back',
          title: 'Back to the list of jobs',
          onclick: () => this._back.emit()
        },
        '← Jobs'
      ),
      clipped(jobId, 'cb-job-id'),
      state
        ? h('span', { class: `cb-job-state cb-state-${state}` }, state)
        : null
    );
  }

  /** One bar per task, coloured by phase; the x axis in seconds since the job started. */
  private _timeline(job: IJobDetail): Element {
    const tasks = job.tasks_detail
      .filter(t => t.t.host_submit !== null || t.t.worker_start !== null)
      .slice(0, MAX_ROWS);
    if (!tasks.length) {
      return h(
        'div',
        { class: 'cb-empty' },
        job.state === 'cancelled'
          ? 'The job was cancelled before any task ended: nothing to plot.'
          : 'No task has ended yet: the timeline fills in as tasks end.'
      );
    }
    const width = Math.max(200, Math.round(this.node.clientWidth || 280));
    const left = 30;
    const right = 8;
    const axis = 26;
    const rowH = Math.max(2, Math.min(10, Math.floor(160 / tasks.length)));
    const height = tasks.length * rowH + axis + 4;
    const end = Math.max(
      0.001,
      ...tasks.map(t => (t.t.result_stored ?? t.t.compute_done ?? 0) as number)
    );
    const x = (v: number) =>
      left + (Math.max(0, v) / end) * (width - left - right);
    const svg = document.createElementNS(SVG, 'svg');
    svg.setAttribute('class', 'cb-timeline');
    svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
    svg.setAttribute('width', '100%');
    const add = (tag: string, attrs: { [k: string]: string | number }) => {
      const el = document.createElementNS(SVG, tag);
      for (const [k, v] of Object.entries(attrs)) {
        el.setAttribute(k, String(v));
      }
      svg.append(el);
      return el;
    };
    tasks.forEach((t, k) => {
      for (const [a, b, label, colour] of PHASES) {
        const ta = t.t[a];
        const tb = t.t[b];
        if (
          ta === null ||
          tb === null ||
          ta === undefined ||
          tb === undefined
        ) {
          continue;
        }
        const fill = label === 'compute' && t.failed ? FAILED : colour;
        const rect = add('rect', {
          x: x(ta),
          y: k * rowH + 2,
          width: Math.max(0.5, x(tb) - x(ta)),
          height: Math.max(1, rowH - 1),
          fill
        });
        rect.setAttribute('class', 'cb-tl-bar');
        rect.setAttribute('data-task', t.task);
        rect.addEventListener('click', () => this._showTask(job, t));
        const title = document.createElementNS(SVG, 'title');
        title.textContent = `${itemsText(t)} · ${label} ${(tb - ta).toFixed(3)} s`;
        rect.append(title);
      }
    });
    // The time axis: a line, ticks at round seconds, its label.
    const y0 = tasks.length * rowH + 4;
    add('line', {
      x1: left,
      x2: width - right,
      y1: y0,
      y2: y0,
      class: 'cb-tl-axis'
    });
    const step = niceStep(end / 4);
    for (let v = 0; v <= end + 1e-9; v += step) {
      add('line', {
        x1: x(v),
        x2: x(v),
        y1: y0,
        y2: y0 + 3,
        class: 'cb-tl-axis'
      });
      add('text', {
        x: x(v),
        y: y0 + 12,
        'text-anchor': 'middle',
        class: 'cb-tl-label'
      }).textContent = `${+v.toFixed(3)}`;
    }
    add('text', {
      x: (left + width - right) / 2,
      y: y0 + 22,
      'text-anchor': 'middle',
      class: 'cb-tl-label'
    }).textContent = 'seconds since the job started';
    add('text', {
      x: 2,
      y: 10,
      class: 'cb-tl-label'
    }).textContent = 'task';
    const legend = h(
      'div',
      { class: 'cb-tl-legend' },
      ...PHASES.map(([, , label, colour]) =>
        h('span', {}, h('i', { style: `background:${colour}` }), label)
      ),
      h('span', {}, h('i', { style: `background:${FAILED}` }), 'failed')
    );
    const note =
      job.tasks_detail.length > MAX_ROWS
        ? h(
            'div',
            { class: 'cb-hint' },
            `first ${MAX_ROWS} of ${job.tasks_detail.length} tasks`
          )
        : null;
    return h('div', { class: 'cb-timeline-box' }, legend, svg, note);
  }

  private _table(job: IJobDetail): HTMLElement {
    const rows = job.tasks_detail.slice(0, MAX_ROWS).map(t => {
      const state =
        t.state +
        (t.infra ? ` (${t.infra.kind})` : '') +
        (t.cold_start ? ', cold start' : '');
      const cell = (text: string, cls = '') =>
        h('td', { class: cls, title: text }, text);
      return h(
        'tr',
        {
          class: `cb-task-${t.state}`,
          'data-task': t.task,
          title: 'Show what this task did',
          onclick: () => this._showTask(job, t)
        },
        cell(itemsText(t)),
        cell(state),
        cell(seconds(t.t.worker_start ?? t.t.host_submit), 'cb-num'),
        cell(span(t, 'setup_done', 'compute_done'), 'cb-num'),
        cell(span(t, 'host_submit', 'result_stored'), 'cb-num')
      );
    });
    return h(
      'table',
      { class: 'cb-tasks' },
      h(
        'thead',
        {},
        h(
          'tr',
          {},
          h('th', { title: 'the items the task ran' }, 'items'),
          h('th', {}, 'state'),
          h(
            'th',
            { class: 'cb-num', title: 'seconds since the job started' },
            'start'
          ),
          h('th', { class: 'cb-num', title: 'seconds computing' }, 'compute'),
          h(
            'th',
            { class: 'cb-num', title: 'seconds from submit to stored result' },
            'total'
          )
        )
      ),
      h('tbody', {}, ...rows)
    );
  }

  private _jobId: string | null = null;
  private _selected: string | null = null; // the task whose detail is shown
  private _taskBox: HTMLElement = h('div', { class: 'cb-task-detail' });
  private _back = new Signal<this, void>(this);
  private _rerun = new Signal<this, string>(this);
}

function itemsText(t: ITaskDetail): string {
  return t.items[1] - t.items[0] > 1
    ? `${t.items[0]}–${t.items[1] - 1}`
    : String(t.items[0]);
}

function seconds(v: number | null | undefined): string {
  return v === null || v === undefined ? '' : v.toFixed(2);
}

function span(t: ITaskDetail, a: string, b: string): string {
  const x = t.t[a];
  const y = t.t[b];
  return x !== null && y !== null && x !== undefined && y !== undefined
    ? (y - x).toFixed(2)
    : '';
}

function niceStep(raw: number): number {
  const p = Math.pow(10, Math.floor(Math.log10(Math.max(raw, 1e-6))));
  for (const m of [1, 2, 5, 10]) {
    if (m * p >= raw) {
      return m * p;
    }
  }
  return 10 * p;
}
