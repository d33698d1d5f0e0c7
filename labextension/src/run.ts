// The sidebar's "Run cell over…" section: pick a list from the kernel, run the selected cell.
import { Cell, CodeCell } from '@jupyterlab/cells';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { ISignal, Signal } from '@lumino/signaling';
import { Widget } from '@lumino/widgets';
import { ICloudConfig } from './api';
import { clipped, h, MessageLine } from './dom';
import { listIterables, runCellOver } from './kernel';
import { row } from './settings';

export class RunSection extends Widget {
  constructor(
    tracker: INotebookTracker,
    config: () => Promise<ICloudConfig | null>
  ) {
    super();
    this.addClass('cb-section');
    this.addClass('cb-run-section');
    this._tracker = tracker;
    this._config = config;
    this._build();
    tracker.currentChanged.connect(this.updateTarget, this);
    tracker.activeCellChanged.connect(this.updateTarget, this);
  }

  /** Emitted when a run was sent to the kernel (its job appears in storage soon). */
  get started(): ISignal<this, void> {
    return this._started;
  }

  /** Emitted when a run's cell has finished. */
  get finished(): ISignal<this, void> {
    return this._finished;
  }

  /** Run the active cell of the current notebook over the chosen iterable. */
  async runActiveCell(): Promise<void> {
    this._message.set('');
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
      const running = runCellOver(cell, notebook.sessionContext, {
        iterable: this._iterable.value,
        name: this._name.value,
        out: this._out.value,
        config: await this._config()
      });
      this._message.set(
        `Running cell [${cellIndex(notebook, cell)}] over ${this._iterable.value.trim()}…`,
        'info'
      );
      this._started.emit();
      const reply = await running;
      const content = reply?.content as any;
      if (content?.status === 'error') {
        this._message.set(
          `The cell raised ${content.ename}: see its output.`,
          'error'
        );
      } else {
        this._message.set('Finished: see the cell output.', 'info');
      }
      this._finished.emit();
    } catch (error) {
      this._message.set((error as Error).message, 'error');
    }
  }

  focusIterable(): void {
    this._iterable.focus();
  }

  updateTarget(): void {
    const notebook = this._tracker.currentWidget;
    const cell = notebook?.content.activeCell;
    let text: string;
    if (!notebook) {
      text = 'No notebook open.';
    } else if (!cell) {
      text = `${notebook.title.label}: no cell selected.`;
    } else {
      const first = cell.model.sharedModel.getSource().split('\n')[0];
      text = `${notebook.title.label} · cell ${cellIndex(notebook, cell)}${first ? ': ' + first : ''}`;
    }
    this._target.replaceChildren(clipped(text));
  }

  private _build(): void {
    this._target = h('div', { class: 'cb-target' });
    this._iterable = h('input', {
      class: 'cb-iterable',
      type: 'text',
      list: 'cb-iterables',
      placeholder: 'xs, range(100), s3://bucket/prefix/…',
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
      placeholder: 'item (obj over storage)'
    }) as HTMLInputElement;
    this._out = h('input', {
      class: 'cb-out',
      type: 'text',
      placeholder: 'results'
    }) as HTMLInputElement;
    this._namesHint = h('div', { class: 'cb-hint' });
    this.node.append(
      h('h3', {}, 'Run cell over…'),
      this._target,
      row('iterable', this._iterable),
      this._names,
      this._namesHint,
      row('each as', this._name),
      row('results in', this._out),
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
      this._message.node
    );
    this.updateTarget();
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

  private _tracker: INotebookTracker;
  private _config: () => Promise<ICloudConfig | null>;
  private _started = new Signal<this, void>(this);
  private _finished = new Signal<this, void>(this);
  private _message = new MessageLine('cb-run-message');
  private _target!: HTMLElement;
  private _iterable!: HTMLInputElement;
  private _names!: HTMLDataListElement;
  private _namesHint!: HTMLElement;
  private _name!: HTMLInputElement;
  private _out!: HTMLInputElement;
}

function cellIndex(notebook: NotebookPanel, cell: Cell): number {
  return notebook.content.widgets.indexOf(cell) + 1;
}
