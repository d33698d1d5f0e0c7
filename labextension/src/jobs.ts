// The sidebar's "Jobs" section: the live list (this notebook's jobs, or all), cancel,
// and one job's detail shown in place of the list.
import { INotebookTracker, NotebookActions } from '@jupyterlab/notebook';
import { Poll } from '@lumino/polling';
import { PanelLayout, Widget } from '@lumino/widgets';
import { api, IJobSummary } from './api';
import { JobDetail } from './detail';
import { loadMagics } from './kernel';
import {
  basename,
  clipped,
  costText,
  countsText,
  formatDuration,
  formatUsd,
  h,
  MessageLine
} from './dom';

/** Does the job come from the notebook at `path` (relative to the server's root)?
 * Jobs carry the kernel's notebook path, absolute (the server's JPY_SESSION_NAME). */
export function jobOfNotebook(job: IJobSummary, path: string): boolean {
  const label = job.notebook ?? '';
  return label === path || label.endsWith('/' + path);
}

/** The list of jobs, newest first. */
class JobList extends Widget {
  constructor(
    onOpen: (id: string) => void,
    onCancel: (id: string) => void,
    onFinish: (id: string) => void
  ) {
    super();
    this.addClass('cb-jobs');
    this._onOpen = onOpen;
    this._onCancel = onCancel;
    this._onFinish = onFinish;
  }

  render(jobs: IJobSummary[]): void {
    this.node.replaceChildren(...jobs.map(job => this._row(job)));
  }

  private _row(job: IJobSummary): HTMLElement {
    const cancel = job.finished
      ? null
      : h(
          'button',
          {
            class: 'jp-mod-styled jp-mod-warn cb-job-cancel',
            title: 'Cancel this job (works while the kernel is busy)',
            onclick: (ev: Event) => {
              ev.stopPropagation();
              this._onCancel(job.job_id);
            }
          },
          'Cancel'
        );
    // A job whose kernel died: `%cloud attach` in a notebook's kernel finishes it.
    const finish =
      job.state === 'lost'
        ? h(
            'button',
            {
              class: 'jp-mod-styled jp-mod-accept cb-job-finish',
              title:
                'Finish this job from the current notebook: %cloud attach sends what ' +
                'its kernel never sent and again what is overdue',
              onclick: (ev: Event) => {
                ev.stopPropagation();
                this._onFinish(job.job_id);
              }
            },
            'Finish'
          )
        : null;
    return h(
      'div',
      {
        class: `cb-job cb-state-${job.state}`,
        'data-job-id': job.job_id,
        title: 'Show the tasks of this job',
        onclick: () => this._onOpen(job.job_id)
      },
      h(
        'div',
        { class: 'cb-job-head' },
        clipped(job.job_id, 'cb-job-id'),
        h('span', { class: 'cb-job-state' }, job.state)
      ),
      clipped(
        `${basename(job.notebook) || job.function || ''} · ${job.backend}`,
        'cb-job-meta'
      ),
      h(
        'div',
        { class: 'cb-progress' },
        h('div', {
          class: 'cb-progress-bar',
          style: `width: ${Math.round(job.progress * 100)}%`
        })
      ),
      h(
        'div',
        { class: 'cb-job-foot' },
        clipped(countsText(job), 'cb-job-counts'),
        h('span', { class: 'cb-job-duration' }, formatDuration(job.duration_s)),
        h(
          'span',
          {
            class: 'cb-job-cost',
            title:
              'at AWS Lambda prices: ' +
              costText(job) +
              (job.stopped ? ` (${job.stopped})` : '')
          },
          formatUsd(job.cost_usd)
        ),
        cancel,
        finish
      ),
      job.stopped ? clipped(job.stopped, 'cb-job-stopped') : null,
      job.rerun_by ? clipped(job.rerun_by.text, 'cb-job-rerun') : null,
      job.rerun_of
        ? clipped(`re-run of ${job.rerun_of}`, 'cb-job-rerun-of')
        : null
    );
  }

  private _onOpen: (id: string) => void;
  private _onCancel: (id: string) => void;
  private _onFinish: (id: string) => void;
}

export class JobsSection extends Widget {
  constructor(tracker: INotebookTracker) {
    super();
    this.addClass('cb-section');
    this.addClass('cb-jobs-section');
    this._tracker = tracker;
    const layout = (this.layout = new PanelLayout());
    this._allBox = h('input', {
      type: 'checkbox',
      class: 'cb-all-jobs',
      onchange: () => {
        this._action.set('');
        void this._poll.refresh();
      }
    }) as HTMLInputElement;
    const head = (this._head = new Widget({
      node: h(
        'div',
        { class: 'cb-jobs-head' },
        h('h3', {}, 'Jobs'),
        h(
          'label',
          {
            class: 'cb-all-label',
            title: 'Show the jobs of every notebook, not only the current one'
          },
          this._allBox,
          'all notebooks'
        )
      )
    }));
    const messages = new Widget({
      node: h('div', {}, this._status.node, this._action.node)
    });
    this._list = new JobList(
      id => this.openDetail(id),
      id => void this.cancel(id),
      id => void this.finish(id)
    );
    this._detail = new JobDetail();
    this._detail.hide();
    this._detail.back.connect(() => this.closeDetail());
    this._detail.rerun.connect((_, id) => void this.rerun(id));
    layout.addWidget(head);
    layout.addWidget(messages);
    layout.addWidget(this._list);
    layout.addWidget(this._detail);
    this._poll = new Poll({
      factory: () => this._refresh(),
      frequency: { interval: 2000, backoff: true, max: 30000 },
      // Nothing to show while the panel or the page is hidden.
      standby: () => !this.isVisible || 'when-hidden',
      name: 'cloudbutton:jobs'
    });
    tracker.currentChanged.connect(() => void this._poll.refresh());
  }

  dispose(): void {
    this._poll.dispose();
    super.dispose();
  }

  refresh(): Promise<void> {
    return this._poll.refresh();
  }

  openDetail(jobId: string): void {
    this._action.set('');
    this._detail.open(jobId);
    this._list.hide();
    this._headVisible(false);
    this._status.node.hidden = true; // it speaks of the list
    this._detail.show();
    void this._refreshDetail();
  }

  closeDetail(): void {
    this._action.set('');
    this._detail.close();
    this._detail.hide();
    this._headVisible(true);
    this._status.node.hidden = false;
    this._list.show();
    void this._poll.refresh();
  }

  async cancel(jobId: string): Promise<void> {
    try {
      const answer = await api.cancel(jobId);
      this._cancelling = jobId;
      this._action.set(
        answer.already
          ? `Cancel of ${jobId} was already requested; waiting for it to stop…`
          : `Cancel requested for ${jobId}; waiting for it to stop…`,
        'info'
      );
    } catch (error) {
      this._action.set(`Cancel failed: ${(error as Error).message}`, 'error');
    }
    void this._poll.refresh();
  }

  /** Finish a job whose kernel died: run `%cloud attach JOB_ID` in a new cell of the
   * current notebook (its results land in that notebook, the live widget in the cell). */
  finish(jobId: string): Promise<void> {
    return this._runMagic(jobId, 'attach', 'Finishing');
  }

  /** Re-run a job's failed items into its results: `%cloud rerun JOB_ID` in a new cell of
   * the current notebook (whose kernel ran the job; its results variable gets them all). */
  rerun(jobId: string): Promise<void> {
    return this._runMagic(jobId, 'rerun', 'Re-running the failed items of');
  }

  private async _runMagic(
    jobId: string,
    sub: string,
    doing: string
  ): Promise<void> {
    const notebook = this._tracker.currentWidget;
    if (!notebook) {
      this._action.set(
        `Open a notebook first: %cloud ${sub} ${jobId} runs in its kernel.`,
        'error'
      );
      return;
    }
    try {
      await loadMagics(notebook.sessionContext);
    } catch (error) {
      this._action.set((error as Error).message, 'error');
      return;
    }
    NotebookActions.insertBelow(notebook.content);
    notebook.content.activeCell?.model.sharedModel.setSource(
      `%cloud ${sub} ${jobId}`
    );
    this._action.set(
      `${doing} ${jobId} in ${basename(notebook.context.path)}…`,
      'info'
    );
    await NotebookActions.run(notebook.content, notebook.sessionContext);
    void this._poll.refresh();
  }

  protected onAfterShow(): void {
    void this._poll.refresh();
  }

  private _headVisible(visible: boolean): void {
    this._head.setHidden(!visible);
  }

  private async _refresh(): Promise<void> {
    let jobs: IJobSummary[];
    try {
      jobs = await api.jobs();
    } catch (error) {
      this._status.set((error as Error).message, 'error');
      throw error; // the poll backs off
    }
    const path = this._tracker.currentWidget?.context.path ?? null;
    const all = this._allBox.checked || !path;
    const shown = all ? jobs : jobs.filter(j => jobOfNotebook(j, path!));
    if (!jobs.length) {
      this._status.set('No jobs yet.');
    } else if (!shown.length) {
      this._status.set(
        `No jobs from ${basename(path)} yet (${jobs.length} from other notebooks: tick "all notebooks").`
      );
    } else {
      this._status.set(all ? '' : `Jobs from ${basename(path)}:`);
    }
    this._list.render(shown);
    this._reportCancel(jobs);
    if (this._detail.jobId) {
      await this._refreshDetail();
    }
  }

  /** Once the job we asked to cancel has stopped, say how it ended (until the next action). */
  private _reportCancel(jobs: IJobSummary[]): void {
    const job = jobs.find(j => j.job_id === this._cancelling);
    if (!job || !job.finished) {
      return;
    }
    this._cancelling = null;
    if (job.state === 'cancelled') {
      this._action.set(
        `Job ${job.job_id} cancelled: ${job.counts.done} of ${job.n_items} done, ` +
          `${job.counts.cancelled} cancelled.`,
        'ok'
      );
    } else {
      this._action.set(
        `Job ${job.job_id} ended before the cancel took effect (${job.state}).`,
        'info'
      );
    }
  }

  private async _refreshDetail(): Promise<void> {
    const id = this._detail.jobId;
    if (!id) {
      return;
    }
    try {
      this._detail.render(await api.job(id));
    } catch (error) {
      this._detail.showError((error as Error).message);
    }
  }

  private _tracker: INotebookTracker;
  private _poll: Poll;
  private _list: JobList;
  private _detail: JobDetail;
  private _allBox: HTMLInputElement;
  private _head: Widget;
  private _status = new MessageLine('cb-jobs-message');
  private _action = new MessageLine('cb-action-message');
  private _cancelling: string | null = null;
}
