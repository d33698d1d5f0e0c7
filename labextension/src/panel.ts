// The "Cloud" sidebar: backend settings and status, "Run cell over…", the live job list.
import { Cell, CodeCell } from '@jupyterlab/cells';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { Poll } from '@lumino/polling';
import { Widget } from '@lumino/widgets';
import {
  api,
  IBackendStatus,
  ICloudConfig,
  IJobDetail,
  IJobSummary,
  ITaskDetail
} from './api';
import { listIterables, runCellOver } from './kernel';

type Attrs = { [key: string]: string | boolean | ((ev: any) => void) };

/** A tiny DOM builder: enough for a form and a list, without React. */
function h(
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

function fmtDuration(s: number): string {
  if (!isFinite(s)) {
    return '';
  }
  if (s < 60) {
    return `${s.toFixed(1)} s`;
  }
  const m = Math.floor(s / 60);
  return m < 60
    ? `${m} min ${Math.round(s % 60)} s`
    : `${Math.floor(m / 60)} h ${m % 60} min`;
}

function fmtCost(usd: number): string {
  return usd < 0.01 ? `$${usd.toFixed(6)}` : `$${usd.toFixed(2)}`;
}

function basename(path: string | null): string {
  return path ? path.split('/').pop() || path : '';
}

export class CloudPanel extends Widget {
  constructor(tracker: INotebookTracker) {
    super();
    this._tracker = tracker;
    this.id = 'cloudbutton-panel';
    this.addClass('cb-Panel');
    this.title.caption = 'Cloud: run cells on stateless workers';
    this._build();
    this._poll = new Poll({
      factory: () => this._refreshJobs(),
      frequency: { interval: 2000, backoff: true, max: 30000 },
      // Nothing to show while the panel or the page is hidden.
      standby: () => !this.isVisible || 'when-hidden',
      name: 'cloudbutton:jobs'
    });
    tracker.currentChanged.connect(this._updateTarget, this);
    tracker.activeCellChanged.connect(this._updateTarget, this);
    void this.loadConfig();
  }

  dispose(): void {
    this._poll.dispose();
    super.dispose();
  }

  /** Run the active cell of the current notebook over the iterable chosen in the panel. */
  async runActiveCell(): Promise<void> {
    this._setRunMessage('', '');
    const notebook = this._tracker.currentWidget;
    const cell = notebook?.content.activeCell;
    try {
      if (!notebook) {
        throw new Error('Open a notebook and select the cell to run.');
      }
      if (!cell) {
        throw new Error('Select a notebook cell first.');
      }
      if (!(cell instanceof CodeCell)) {
        throw new Error('The selected cell is not a code cell.');
      }
      if (!this._iterable.value.trim()) {
        this._iterable.focus();
        throw new Error('Choose or type the iterable to run the cell over.');
      }
      if (!this._config) {
        await this.loadConfig();
      }
      const running = runCellOver(cell, notebook.sessionContext, {
        iterable: this._iterable.value,
        name: this._name.value,
        out: this._out.value,
        config: this._config
      });
      this._setRunMessage(
        `Running cell [${this._cellIndex(notebook, cell)}] over ${this._iterable.value.trim()}…`,
        'info'
      );
      // A new job appears in storage a moment after the run starts.
      setTimeout(() => void this._poll.refresh(), 700);
      const reply = await running;
      const status = (reply?.content as any)?.status;
      if (status === 'error') {
        this._setRunMessage(
          `The cell raised ${(reply?.content as any).ename}: see its output.`,
          'error'
        );
      } else {
        this._setRunMessage('Finished: see the cell output.', 'info');
      }
      void this._poll.refresh();
    } catch (error) {
      this._setRunMessage((error as Error).message, 'error');
    }
  }

  focusIterable(): void {
    this._iterable.focus();
  }

  async loadConfig(): Promise<void> {
    try {
      this._config = await api.getConfig();
      this._showConfig(this._config);
      this._setConfigMessage(
        this._config.warning ?? '',
        this._config.warning ? 'error' : ''
      );
      void this.refreshStatus();
    } catch (error) {
      this._setConfigMessage((error as Error).message, 'error');
    }
  }

  async refreshStatus(): Promise<void> {
    const backend = this._backend.value;
    this._status.textContent = `checking ${backend}…`;
    this._status.className = 'cb-status';
    try {
      const st = await api.backendStatus(backend);
      this._showStatus(st);
    } catch (error) {
      this._status.textContent = (error as Error).message;
      this._status.className = 'cb-status cb-error';
    }
  }

  protected onAfterShow(): void {
    this._updateTarget();
    void this._poll.refresh();
  }

  // Building ------------------------------------------------------------------
  private _build(): void {
    const node = this.node;
    // Backend section.
    this._backend = h(
      'select',
      { class: 'cb-backend', onchange: () => this._onBackendChange() },
      h('option', { value: 'local' }, 'local processes'),
      h('option', { value: 'lambda' }, 'AWS Lambda')
    ) as HTMLSelectElement;
    const num = (cls: string, placeholder: string) =>
      h('input', {
        class: cls,
        type: 'text',
        inputmode: 'numeric',
        placeholder
      }) as HTMLInputElement;
    this._workers = num('cb-workers', 'auto');
    this._memory = num('cb-memory', 'default');
    this._timeout = num('cb-timeout', 'default');
    this._chunksize = num('cb-chunksize', '1 or auto');
    this._retries = num('cb-retries', '0');
    const text = (cls: string, placeholder: string) =>
      h('input', { class: cls, type: 'text', placeholder }) as HTMLInputElement;
    this._region = text('cb-region', 'us-east-1');
    this._bucket = text('cb-bucket', 'my-cloudbutton-bucket');
    this._function = text('cb-function', 'cloudbutton-worker');
    this._lambdaBox = h(
      'div',
      { class: 'cb-lambda' },
      this._row('region', this._region),
      this._row('S3 bucket', this._bucket),
      this._row('function', this._function)
    );
    this._lambdaBox.hidden = true; // until the config says lambda
    this._status = h('div', { class: 'cb-status' });
    this._configMsg = h('div', { class: 'cb-message' });
    node.append(
      h(
        'section',
        { class: 'cb-section cb-backend-section' },
        h('h3', {}, 'Backend'),
        this._row('run on', this._backend),
        this._status,
        this._lambdaBox,
        this._row('workers', this._workers),
        this._row('memory (MB)', this._memory),
        this._row('timeout (s)', this._timeout),
        this._row('chunksize', this._chunksize),
        this._row('retries', this._retries),
        h(
          'div',
          { class: 'cb-buttons' },
          h(
            'button',
            {
              class: 'jp-mod-styled jp-mod-accept cb-save',
              onclick: () => void this._saveConfig()
            },
            'Save'
          ),
          h(
            'button',
            {
              class: 'jp-mod-styled cb-check',
              onclick: () => void this.refreshStatus()
            },
            'Check status'
          )
        ),
        this._configMsg
      )
    );

    // Run section.
    this._target = h('div', { class: 'cb-target' });
    this._iterable = h('input', {
      class: 'cb-iterable',
      type: 'text',
      list: 'cb-iterables',
      placeholder: 'xs, range(100), df.index…',
      onfocus: () => void this._refreshNames(),
      onkeydown: (ev: KeyboardEvent) => {
        if (ev.key === 'Enter') {
          void this.runActiveCell();
        }
      }
    }) as HTMLInputElement;
    this._names = h('datalist', { id: 'cb-iterables' }) as HTMLDataListElement;
    this._name = h('input', {
      class: 'cb-as',
      type: 'text',
      placeholder: 'item'
    }) as HTMLInputElement;
    this._out = h('input', {
      class: 'cb-out',
      type: 'text',
      placeholder: 'results'
    }) as HTMLInputElement;
    this._namesHint = h('div', { class: 'cb-hint' });
    this._runMsg = h('div', { class: 'cb-message cb-run-message' });
    node.append(
      h(
        'section',
        { class: 'cb-section cb-run-section' },
        h('h3', {}, 'Run cell over…'),
        this._target,
        this._row('iterable', this._iterable),
        this._names,
        this._namesHint,
        this._row('each as', this._name),
        this._row('results in', this._out),
        h(
          'div',
          { class: 'cb-buttons' },
          h(
            'button',
            {
              class: 'jp-mod-styled jp-mod-accept cb-run',
              title: 'Run the selected cell once per element (Alt+Shift+Enter)',
              onclick: () => void this.runActiveCell()
            },
            '☁ Run cell over list'
          ),
          h(
            'button',
            {
              class: 'jp-mod-styled cb-refresh-names',
              title: 'List the list-like names of the kernel',
              onclick: () => void this._refreshNames(true)
            },
            '↻ names'
          )
        ),
        this._runMsg
      )
    );

    // Jobs section.
    this._jobsMsg = h('div', { class: 'cb-message cb-jobs-message' });
    this._jobs = h('div', { class: 'cb-jobs' });
    this._detail = h('div', { class: 'cb-detail' });
    this._detail.hidden = true;
    node.append(
      h(
        'section',
        { class: 'cb-section cb-jobs-section' },
        h('h3', {}, 'Jobs'),
        this._jobsMsg,
        this._jobs,
        this._detail
      )
    );
    this._updateTarget();
  }

  private _row(label: string, input: HTMLElement): HTMLElement {
    return h('label', { class: 'cb-row' }, h('span', {}, label), input);
  }

  // Config ----------------------------------------------------------------------
  private _showConfig(c: ICloudConfig): void {
    const v = (x: unknown) => (x === null || x === undefined ? '' : String(x));
    this._backend.value = c.backend;
    this._workers.value = v(c.workers);
    this._memory.value = v(c.memory_mb);
    this._timeout.value = v(c.timeout);
    this._chunksize.value = c.chunksize === 1 ? '' : v(c.chunksize);
    this._retries.value = c.retries ? v(c.retries) : '';
    this._region.value = v(c.region);
    this._bucket.value = v(c.bucket);
    this._function.value = v(c.lambda?.function_name);
    this._lambdaBox.hidden = c.backend !== 'lambda';
  }

  private _readConfig(): Partial<ICloudConfig> {
    const num = (input: HTMLInputElement, what: string): number | null => {
      const t = input.value.trim();
      if (!t) {
        return null;
      }
      const n = Number(t);
      if (!isFinite(n)) {
        throw new Error(`${what} must be a number, got "${t}"`);
      }
      return n;
    };
    const chunk = this._chunksize.value.trim();
    const lambda: { [key: string]: string | number } = {
      ...(this._config?.lambda ?? {})
    };
    delete lambda.function_name;
    if (this._function.value.trim()) {
      lambda.function_name = this._function.value.trim();
    }
    return {
      backend: this._backend.value as 'local' | 'lambda',
      workers: num(this._workers, 'workers'),
      memory_mb: num(this._memory, 'memory'),
      timeout: num(this._timeout, 'timeout'),
      chunksize:
        chunk === 'auto' ? 'auto' : (num(this._chunksize, 'chunksize') ?? 1),
      retries: num(this._retries, 'retries') ?? 0,
      region: this._region.value.trim() || null,
      profile: this._config?.profile ?? null,
      bucket: this._bucket.value.trim() || null,
      lambda
    };
  }

  private async _saveConfig(): Promise<void> {
    try {
      this._config = await api.putConfig(this._readConfig());
      this._showConfig(this._config);
      if (this._config.warning) {
        this._setConfigMessage(this._config.warning, 'error');
      } else {
        this._setConfigMessage(
          `Saved to ${this._config.path}: applies to the next run.`,
          'info'
        );
      }
      void this.refreshStatus();
      void this._poll.refresh(); // the job list follows the backend's storage
    } catch (error) {
      this._setConfigMessage((error as Error).message, 'error');
    }
  }

  private _onBackendChange(): void {
    this._lambdaBox.hidden = this._backend.value !== 'lambda';
    void this.refreshStatus();
  }

  private _showStatus(st: IBackendStatus): void {
    const parts: string[] = [];
    if (st.backend === 'lambda') {
      for (const key of [
        'credentials',
        'deployed',
        'versions_match',
        'region',
        'bucket',
        'function'
      ]) {
        if (st[key] !== undefined && st[key] !== null) {
          parts.push(`${key.replace('_', ' ')}: ${String(st[key])}`);
        }
      }
    } else if (st.message) {
      parts.push(String(st.message));
    }
    if (st.error) {
      parts.push(String(st.error));
    } else if (st.message && st.backend === 'lambda') {
      parts.push(String(st.message));
    }
    this._status.textContent = `${st.ok ? '● ready' : '● not ready'} · ${parts.join(' · ')}`;
    this._status.className = `cb-status ${st.ok ? 'cb-ok' : 'cb-error'}`;
  }

  // Target cell and kernel names ---------------------------------------------------
  private _cellIndex(notebook: NotebookPanel, cell: Cell): number {
    return notebook.content.widgets.indexOf(cell) + 1;
  }

  private _updateTarget(): void {
    if (!this._target) {
      return;
    }
    const notebook = this._tracker.currentWidget;
    const cell = notebook?.content.activeCell;
    if (!notebook) {
      this._target.textContent = 'No notebook open.';
    } else if (!cell) {
      this._target.textContent = `${notebook.title.label}: no cell selected.`;
    } else {
      const first = cell.model.sharedModel
        .getSource()
        .split('\n')[0]
        .slice(0, 40);
      this._target.textContent = `${notebook.title.label} · cell ${this._cellIndex(notebook, cell)}${
        first ? ': ' + first : ''
      }`;
    }
  }

  private async _refreshNames(explicit = false): Promise<void> {
    const notebook = this._tracker.currentWidget;
    if (!notebook) {
      if (explicit) {
        this._namesHint.textContent = 'Open a notebook first.';
      }
      return;
    }
    const kernel = notebook.sessionContext.session?.kernel;
    // A busy kernel would answer only after the running cell: don't wait for it.
    if (!kernel || (!explicit && kernel.status !== 'idle')) {
      if (explicit) {
        this._namesHint.textContent = kernel
          ? 'The kernel is busy.'
          : 'This notebook has no running kernel.';
      }
      return;
    }
    try {
      const names = await listIterables(notebook.sessionContext);
      this._names.replaceChildren(
        ...names.map(n =>
          h(
            'option',
            { value: n.name },
            `${n.type}${n.length !== null ? ` of ${n.length}` : ''}`
          )
        )
      );
      this._namesHint.textContent = names.length
        ? `in the kernel: ${names
            .slice(0, 8)
            .map(n => n.name)
            .join(', ')}${names.length > 8 ? '…' : ''}`
        : 'No lists in the kernel namespace yet.';
    } catch (error) {
      this._namesHint.textContent = `Cannot list the kernel's names: ${(error as Error).message}`;
    }
  }

  // Jobs ------------------------------------------------------------------------------
  private async _refreshJobs(): Promise<void> {
    try {
      const jobs = await api.jobs();
      this._jobsMsg.textContent = jobs.length ? '' : 'No jobs yet.';
      this._jobsMsg.className = 'cb-message cb-jobs-message';
      this._renderJobs(jobs);
      if (this._detailId) {
        await this._refreshDetail();
      }
    } catch (error) {
      this._jobsMsg.textContent = (error as Error).message;
      this._jobsMsg.className = 'cb-message cb-jobs-message cb-error';
      throw error; // the poll backs off
    }
  }

  private _renderJobs(jobs: IJobSummary[]): void {
    this._jobs.replaceChildren(...jobs.map(job => this._jobRow(job)));
  }

  private _jobRow(job: IJobSummary): HTMLElement {
    const c = job.counts;
    const pct = Math.round(job.progress * 100);
    const counts = [
      `${c.done}/${job.n_items} done`,
      c.failed ? `${c.failed} failed` : '',
      c.cancelled ? `${c.cancelled} cancelled` : '',
      c.lost ? `${c.lost} lost` : ''
    ]
      .filter(Boolean)
      .join(' · ');
    const cancel = job.finished
      ? null
      : h(
          'button',
          {
            class: 'jp-mod-styled jp-mod-warn cb-job-cancel',
            title: 'Cancel this job (works while the kernel is busy)',
            onclick: (ev: Event) => {
              ev.stopPropagation();
              void this._cancel(job.job_id);
            }
          },
          'Cancel'
        );
    return h(
      'div',
      {
        class: `cb-job cb-state-${job.state}${this._detailId === job.job_id ? ' cb-selected' : ''}`,
        'data-job-id': job.job_id,
        title: 'Show the tasks of this job',
        onclick: () => void this._openDetail(job.job_id)
      },
      h(
        'div',
        { class: 'cb-job-head' },
        h('span', { class: 'cb-job-id' }, job.job_id),
        h('span', { class: `cb-job-state` }, job.state)
      ),
      h(
        'div',
        { class: 'cb-job-meta' },
        `${basename(job.notebook) || job.function || ''} · ${job.backend}`
      ),
      h(
        'div',
        { class: 'cb-progress' },
        h('div', { class: 'cb-progress-bar', style: `width: ${pct}%` })
      ),
      h(
        'div',
        { class: 'cb-job-foot' },
        h('span', { class: 'cb-job-counts' }, counts),
        h('span', {}, fmtDuration(job.duration_s)),
        h(
          'span',
          { title: 'estimated cost at AWS Lambda prices' },
          fmtCost(job.cost_usd)
        ),
        cancel
      )
    );
  }

  private async _cancel(jobId: string): Promise<void> {
    try {
      await api.cancel(jobId);
      this._jobsMsg.textContent = `Cancelling ${jobId}…`;
      this._jobsMsg.className = 'cb-message cb-jobs-message';
    } catch (error) {
      this._jobsMsg.textContent = `Cancel failed: ${(error as Error).message}`;
      this._jobsMsg.className = 'cb-message cb-jobs-message cb-error';
    }
    void this._poll.refresh();
  }

  private async _openDetail(jobId: string): Promise<void> {
    this._detailId = this._detailId === jobId ? null : jobId;
    this._detail.hidden = !this._detailId;
    for (const row of Array.from(this._jobs.children)) {
      row.classList.toggle(
        'cb-selected',
        (row as HTMLElement).dataset.jobId === this._detailId
      );
    }
    if (this._detailId) {
      await this._refreshDetail();
    }
  }

  private async _refreshDetail(): Promise<void> {
    const id = this._detailId;
    if (!id) {
      return;
    }
    try {
      const detail = await api.job(id);
      if (this._detailId === id) {
        this._renderDetail(detail);
      }
    } catch (error) {
      this._detail.replaceChildren(
        h('div', { class: 'cb-error' }, (error as Error).message)
      );
    }
  }

  private _renderDetail(job: IJobDetail): void {
    const close = h(
      'button',
      {
        class: 'jp-mod-styled cb-detail-close',
        onclick: () => void this._openDetail(job.job_id)
      },
      'Close'
    );
    const rows = job.tasks_detail.map(t =>
      h(
        'tr',
        { class: `cb-task-${t.state}` },
        h(
          'td',
          { title: `task ${t.task}` },
          t.items[1] - t.items[0] > 1
            ? `${t.items[0]}–${t.items[1] - 1}`
            : String(t.items[0])
        ),
        h('td', {}, t.state + (t.infra ? ` (${t.infra.kind})` : '')),
        h('td', {}, this._span(t, 'worker_start', 'result_stored')),
        h('td', {}, this._span(t, 'setup_done', 'compute_done')),
        h(
          'td',
          {},
          t.cold_start ? 'cold' : t.cold_start === false ? 'warm' : ''
        ),
        h('td', {}, t.peak_mem_mb ? `${Math.round(t.peak_mem_mb)}` : '')
      )
    );
    const table = h(
      'table',
      { class: 'cb-tasks' },
      h(
        'thead',
        {},
        h(
          'tr',
          {},
          ...['items', 'state', 'total', 'compute', 'start', 'MB'].map(x =>
            h('th', {}, x)
          )
        )
      ),
      h('tbody', {}, ...rows)
    );
    const failures = job.failures
      .slice(0, 20)
      .map(f =>
        h(
          'details',
          { class: 'cb-failure' },
          h('summary', {}, `item ${f.i}: ${f.type}: ${f.message}`),
          h('pre', {}, f.traceback || f.message),
          f.stdout ? h('pre', { class: 'cb-stdout' }, f.stdout) : null
        )
      );
    this._detail.replaceChildren(
      h('div', { class: 'cb-detail-head' }, h('strong', {}, job.job_id), close),
      h(
        'div',
        { class: 'cb-job-meta' },
        `${basename(job.notebook) || job.function || ''} · ${job.n_items} items in ${job.tasks} tasks · ` +
          `${job.memory_mb ?? '?'} MB · ${job.gb_seconds.toFixed(3)} GB-s · ${fmtCost(job.cost_usd)}`
      ),
      this._timeline(job),
      ...(failures.length
        ? [h('h4', {}, `Failures (${job.failures.length})`), ...failures]
        : []),
      table
    );
  }

  private _span(t: ITaskDetail, a: string, b: string): string {
    const x = t.t[a];
    const y = t.t[b];
    return x !== null && y !== null && x !== undefined && y !== undefined
      ? `${(y - x).toFixed(2)}s`
      : '';
  }

  /** One bar per task: queued/invoking (grey), setup (light), compute (dark), storing the result. */
  private _timeline(job: IJobDetail): Element {
    const ns = 'http://www.w3.org/2000/svg';
    const tasks = job.tasks_detail.filter(t => t.t.worker_start !== null);
    const svg = document.createElementNS(ns, 'svg');
    svg.setAttribute('class', 'cb-timeline');
    const rowH = 4;
    const height = Math.max(10, Math.min(tasks.length, 200) * rowH + 12);
    svg.setAttribute('viewBox', `0 0 300 ${height}`);
    svg.setAttribute('preserveAspectRatio', 'none');
    svg.setAttribute('height', String(height));
    const end = Math.max(
      0.001,
      ...tasks.map(t => (t.t.result_stored ?? t.t.compute_done ?? 0) as number)
    );
    const x = (v: number) => (v / end) * 296 + 2;
    tasks.slice(0, 200).forEach((t, k) => {
      const phases: [string, number | null, number | null][] = [
        ['cb-tl-queue', t.t.host_submit, t.t.worker_start],
        ['cb-tl-setup', t.t.worker_start, t.t.setup_done],
        ['cb-tl-compute', t.t.setup_done, t.t.compute_done],
        ['cb-tl-store', t.t.compute_done, t.t.result_stored]
      ];
      for (const [cls, a, b] of phases) {
        if (a === null || b === null || a === undefined || b === undefined) {
          continue;
        }
        const rect = document.createElementNS(ns, 'rect');
        rect.setAttribute(
          'class',
          t.state === 'error' ? `${cls} cb-tl-error` : cls
        );
        rect.setAttribute('x', String(x(a)));
        rect.setAttribute('y', String(k * rowH + 2));
        rect.setAttribute('width', String(Math.max(0.5, x(b) - x(a))));
        rect.setAttribute('height', String(rowH - 1));
        svg.append(rect);
      }
    });
    const label = document.createElementNS(ns, 'text');
    label.setAttribute('x', '298');
    label.setAttribute('y', String(height - 1));
    label.setAttribute('text-anchor', 'end');
    label.setAttribute('class', 'cb-tl-label');
    label.textContent = `${end.toFixed(1)} s since submit`;
    svg.append(label);
    return svg;
  }

  private _setRunMessage(text: string, kind: string): void {
    this._runMsg.textContent = text;
    this._runMsg.className = `cb-message cb-run-message ${kind ? 'cb-' + kind : ''}`;
  }

  private _setConfigMessage(text: string, kind: string): void {
    this._configMsg.textContent = text;
    this._configMsg.className = `cb-message ${kind ? 'cb-' + kind : ''}`;
  }

  private _tracker: INotebookTracker;
  private _poll: Poll;
  private _config: ICloudConfig | null = null;
  private _detailId: string | null = null;
  private _backend!: HTMLSelectElement;
  private _workers!: HTMLInputElement;
  private _memory!: HTMLInputElement;
  private _timeout!: HTMLInputElement;
  private _chunksize!: HTMLInputElement;
  private _retries!: HTMLInputElement;
  private _region!: HTMLInputElement;
  private _bucket!: HTMLInputElement;
  private _function!: HTMLInputElement;
  private _lambdaBox!: HTMLElement;
  private _status!: HTMLElement;
  private _configMsg!: HTMLElement;
  private _target!: HTMLElement;
  private _iterable!: HTMLInputElement;
  private _names!: HTMLDataListElement;
  private _namesHint!: HTMLElement;
  private _name!: HTMLInputElement;
  private _out!: HTMLInputElement;
  private _runMsg!: HTMLElement;
  private _jobsMsg!: HTMLElement;
  private _jobs!: HTMLElement;
  private _detail!: HTMLElement;
}
