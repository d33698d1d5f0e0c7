// The sidebar's "Backend" section: where %%cloud runs, its status and its saved defaults.
import { ISignal, Signal } from '@lumino/signaling';
import { Widget } from '@lumino/widgets';
import { api, IBackendStatus, ICloudConfig } from './api';
import { h, MessageLine } from './dom';

export function row(label: string, input: HTMLElement): HTMLElement {
  return h('label', { class: 'cb-row' }, h('span', {}, label), input);
}

export class SettingsSection extends Widget {
  constructor() {
    super();
    this.addClass('cb-section');
    this.addClass('cb-backend-section');
    this._build();
  }

  /** The saved config (null until loaded). */
  get config(): ICloudConfig | null {
    return this._config;
  }

  /** Emitted when a config was loaded or saved (the job list follows the backend's storage). */
  get configChanged(): ISignal<this, ICloudConfig> {
    return this._configChanged;
  }

  async loadConfig(): Promise<void> {
    try {
      this._config = await api.getConfig();
      this._show(this._config);
      this._message.set(
        this._config.warning ?? '',
        this._config.warning ? 'error' : ''
      );
      this._configChanged.emit(this._config);
      void this.refreshStatus();
    } catch (error) {
      this._message.set((error as Error).message, 'error');
    }
  }

  async refreshStatus(): Promise<void> {
    const backend = this._backend.value;
    this._status.textContent = `checking ${backend}…`;
    this._status.className = 'cb-status';
    try {
      this._showStatus(await api.backendStatus(backend));
    } catch (error) {
      this._status.textContent = (error as Error).message;
      this._status.className = 'cb-status cb-error';
    }
  }

  private _build(): void {
    this._backend = h(
      'select',
      { class: 'cb-backend', onchange: () => this._onBackendChange() },
      h('option', { value: 'local' }, 'local processes'),
      h('option', { value: 'lambda' }, 'AWS Lambda')
    ) as HTMLSelectElement;
    const input = (cls: string, placeholder: string, numeric = true) =>
      h('input', {
        class: cls,
        type: 'text',
        placeholder,
        ...(numeric ? { inputmode: 'numeric' } : {})
      }) as HTMLInputElement;
    this._workers = input('cb-workers', 'auto');
    this._memory = input('cb-memory', 'default');
    this._timeout = input('cb-timeout', 'default');
    this._chunksize = input('cb-chunksize', '1 or auto');
    this._retries = input('cb-retries', '0');
    this._region = input('cb-region', 'us-east-1', false);
    this._bucket = input('cb-bucket', 'my-cloudbutton-bucket', false);
    this._function = input('cb-function', 'cloudbutton-worker', false);
    this._lambdaBox = h(
      'div',
      { class: 'cb-lambda' },
      row('region', this._region),
      row('S3 bucket', this._bucket),
      row('function', this._function)
    );
    this._lambdaBox.hidden = true; // until the config says lambda
    this._status = h('div', { class: 'cb-status' });
    // Defaults fold away: the list of jobs is what a user looks at most.
    const defaults = h(
      'details',
      { class: 'cb-defaults' },
      h('summary', {}, 'defaults'),
      row('workers', this._workers),
      row('memory (MB)', this._memory),
      row('timeout (s)', this._timeout),
      row('chunksize', this._chunksize),
      row('retries', this._retries)
    );
    this.node.append(
      h('h3', {}, 'Backend'),
      row('run on', this._backend),
      this._status,
      this._lambdaBox,
      defaults,
      h(
        'div',
        { class: 'cb-buttons' },
        h(
          'button',
          {
            class: 'jp-mod-styled jp-mod-accept cb-save',
            onclick: () => void this._save()
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
      this._message.node
    );
  }

  private _show(c: ICloudConfig): void {
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

  private _read(): Partial<ICloudConfig> {
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

  private async _save(): Promise<void> {
    try {
      this._config = await api.putConfig(this._read());
      this._show(this._config);
      if (this._config.warning) {
        this._message.set(this._config.warning, 'error');
      } else {
        this._message.set(
          `Saved to ${this._config.path}: applies to the next run.`,
          'info'
        );
      }
      this._configChanged.emit(this._config);
      void this.refreshStatus();
    } catch (error) {
      this._message.set((error as Error).message, 'error');
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

  private _config: ICloudConfig | null = null;
  private _configChanged = new Signal<this, ICloudConfig>(this);
  private _message = new MessageLine('cb-config-message');
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
}
