// Talking to the notebook's kernel: list-like names, loading the magic, running a cell over a list.
import { ISessionContext } from '@jupyterlab/apputils';
import { CodeCell } from '@jupyterlab/cells';
import { OutputArea } from '@jupyterlab/outputarea';
import { Kernel, KernelMessage } from '@jupyterlab/services';
import { ICloudConfig } from './api';

export interface INameInfo {
  name: string;
  type: string;
  length: number | null;
}

// One expression (user_expressions take expressions, not statements) that lists the
// kernel namespace's list-like values as JSON; it never consumes iterators.
const LIST_NAMES_EXPR =
  "__import__('json').dumps([[k, type(v).__name__, (len(v) if hasattr(v, '__len__') else None)] " +
  'for k, v in sorted(dict(globals()).items()) ' +
  "if not k.startswith('_') and k not in ('In', 'Out') and not isinstance(v, type) and " +
  '(isinstance(v, (list, tuple, range, dict, set, frozenset)) or ' +
  "type(v).__name__ in ('ndarray', 'Series', 'Index', 'DataFrame'))])";

// Execute-request metadata: the line number the magic's body starts at in the user's
// cell (kernel_magic/cloudbutton_magic/runner.py reads it for its error messages).
const FIRST_LINE_KEY = 'cloudbutton_first_line';

const IDENTIFIER = /^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$/;

export class KernelError extends Error {}

function kernelOf(sessionContext: ISessionContext): Kernel.IKernelConnection {
  const kernel = sessionContext.session?.kernel;
  if (!kernel) {
    throw new KernelError(
      'This notebook has no running kernel: start or select a kernel first.'
    );
  }
  return kernel;
}

function errorText(content: { ename?: string; evalue?: string }): string {
  return `${content.ename ?? 'Error'}: ${content.evalue ?? ''}`;
}

/** Run code and expressions silently (nothing reaches a cell or the history). */
async function silentExecute(
  kernel: Kernel.IKernelConnection,
  code: string,
  expressions: { [key: string]: string } = {}
): Promise<{ [key: string]: any }> {
  const future = kernel.requestExecute({
    code,
    silent: true,
    store_history: false,
    user_expressions: expressions,
    allow_stdin: false,
    stop_on_error: false
  });
  const reply = (await future.done) as KernelMessage.IExecuteReplyMsg;
  const content = reply.content as any;
  if (content.status !== 'ok') {
    throw new KernelError(errorText(content));
  }
  return content.user_expressions ?? {};
}

function plainText(result: any): string {
  if (!result || result.status !== 'ok') {
    throw new KernelError(errorText(result ?? {}));
  }
  const text: string = result.data?.['text/plain'] ?? '';
  // The repr of a str: strip the quotes (our JSON has no quotes of that kind inside).
  return /^['"]/.test(text) ? text.slice(1, -1) : text;
}

/** The list-like names of the kernel namespace, for the iterable picker. */
export async function listIterables(
  sessionContext: ISessionContext
): Promise<INameInfo[]> {
  const kernel = kernelOf(sessionContext);
  const out = await silentExecute(kernel, '', { names: LIST_NAMES_EXPR });
  const rows = JSON.parse(plainText(out.names).replace(/\\\\/g, '\\')) as [
    string,
    string,
    number | null
  ][];
  return rows.map(([name, type, length]) => ({ name, type, length }));
}

export interface IRunOptions {
  iterable: string;
  name: string;
  out: string;
  config: ICloudConfig | null;
}

function checkIdentifier(what: string, value: string): void {
  if (value && !/^[A-Za-z_][A-Za-z0-9_]*$/.test(value)) {
    throw new KernelError(`${what} must be a Python name, got "${value}"`);
  }
}

/** Whether the iterable names storage (a data-driven map): `s3://bucket/prefix/` or a path. */
export function isStoragePath(iterable: string): boolean {
  return /^(s3:\/\/|\/|\.\.?\/|~)/.test(iterable.trim());
}

/** The magic's first line: `%%cloud map ITERABLE [as NAME] [-o OUT] [options]`. */
export function magicLine(options: IRunOptions): string {
  const iterable = options.iterable.trim();
  if (!iterable) {
    throw new KernelError('Choose or type the iterable to run the cell over.');
  }
  if (iterable.includes('\n')) {
    throw new KernelError('The iterable must fit on one line.');
  }
  const storage = isStoragePath(iterable);
  if (storage && /\s/.test(iterable)) {
    throw new KernelError(
      `The storage path "${iterable}" has a space: put it in a variable and run over that.`
    );
  }
  checkIdentifier('The element name', options.name.trim());
  checkIdentifier('The results name', options.out.trim());
  const parts = ['%%cloud map', iterable];
  // Over storage each run gets its chunk as `obj`, Lithops' name, unless named otherwise.
  const name = options.name.trim() || (storage ? 'obj' : '');
  if (name) {
    parts.push('as', name);
  }
  if (options.out.trim()) {
    parts.push('-o', options.out.trim());
  }
  // The saved defaults travel explicitly, so a run does exactly what the panel shows.
  const c = options.config;
  if (c) {
    parts.push('--backend', c.backend);
    if (c.workers) {
      parts.push('--workers', String(c.workers));
    }
    if (c.memory_mb) {
      parts.push('--memory', String(c.memory_mb));
    }
    if (c.timeout) {
      parts.push('--timeout', String(c.timeout));
    }
    if (c.chunksize && c.chunksize !== 1) {
      parts.push('--chunksize', String(c.chunksize));
    }
    if (c.retries) {
      parts.push('--retries', String(c.retries));
    }
  }
  return parts.join(' ');
}

/** Load the %cloud magics in the notebook's kernel, silently (a no-op when loaded). */
export async function loadMagics(
  sessionContext: ISessionContext
): Promise<void> {
  try {
    await silentExecute(
      kernelOf(sessionContext),
      '%load_ext cloudbutton_jupyter'
    );
  } catch (error) {
    throw new KernelError(
      `Could not load the %cloud magic in this kernel (${(error as Error).message}). ` +
        'Is cloudbutton-jupyter installed in the kernel environment?'
    );
  }
}

/**
 * Run `cell` over the iterable in the notebook's kernel: its outputs (the live widget)
 * go to the cell's own output area; the cell's source is left as it is.
 */
export async function runCellOver(
  cell: CodeCell,
  sessionContext: ISessionContext,
  options: IRunOptions
): Promise<KernelMessage.IExecuteReplyMsg | undefined> {
  const line = magicLine(options);
  const kernel = kernelOf(sessionContext);
  const source = cell.model.sharedModel.getSource();
  if (!source.trim()) {
    throw new KernelError(
      'The selected cell is empty: write the code to run per element.'
    );
  }
  if (/^\s*%%/.test(source)) {
    throw new KernelError(
      'The selected cell already starts with a cell magic: run it directly.'
    );
  }
  // Load the magic (a no-op when loaded) and check a plain name exists before touching the cell.
  const expressions: { [key: string]: string } = {};
  const iterable = options.iterable.trim();
  if (IDENTIFIER.test(iterable)) {
    expressions.check = `type(${iterable}).__name__`;
  }
  let checked: { [key: string]: any };
  try {
    checked = await silentExecute(
      kernel,
      '%load_ext cloudbutton_jupyter',
      expressions
    );
  } catch (error) {
    throw new KernelError(
      `Could not load the %%cloud magic in this kernel (${(error as Error).message}). ` +
        'Is cloudbutton-jupyter installed in the kernel environment?'
    );
  }
  if (checked.check && checked.check.status !== 'ok') {
    throw new KernelError(
      checked.check.ename === 'NameError'
        ? `"${iterable}" is not defined in the notebook's kernel: run the cell that defines it first.`
        : `"${iterable}" cannot be evaluated: ${errorText(checked.check)}`
    );
  }

  const model = cell.model;
  model.sharedModel.transact(
    () => {
      model.clearExecution();
      cell.outputHidden = false;
    },
    false,
    'silent-change'
  );
  model.executionState = 'running';
  model.trusted = true;
  try {
    const reply = await OutputArea.execute(
      `${line}\n${source}`,
      cell.outputArea,
      sessionContext,
      {
        cellId: model.sharedModel.getId(),
        // The cell as the user sees it has no %%cloud line: its first line is the body's.
        [FIRST_LINE_KEY]: 1
      }
    );
    if (reply) {
      model.executionCount = reply.content.execution_count;
    }
    return reply;
  } finally {
    model.executionState = 'idle';
  }
}
