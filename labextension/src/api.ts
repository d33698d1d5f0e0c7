// REST client for the server extension (routes under /cloudbutton/).
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

export interface ICloudConfig {
  backend: 'local' | 'lambda';
  workers: number | null;
  memory_mb: number | null;
  timeout: number | null;
  chunksize: number | 'auto';
  retries: number;
  // Lambda settings, in the layout of the executor's config file.
  region: string | null;
  profile: string | null;
  bucket: string | null;
  lambda: { [key: string]: string | number };
  path?: string;
  warning?: string;
}

export interface IBackendStatus {
  backend: string;
  ok: boolean;
  error?: string;
  message?: string;
  [key: string]: unknown;
}

export interface IJobSummary {
  job_id: string;
  created: number;
  notebook: string | null;
  function: string | null;
  backend: string;
  n_items: number;
  state: 'running' | 'done' | 'failed' | 'cancelled' | 'lost';
  counts: {
    done: number;
    failed: number;
    cached: number;
    pending: number;
    cancelled: number;
    lost: number;
  };
  progress: number;
  duration_s: number;
  finished: boolean;
  tasks: number;
  memory_mb: number | null;
  cost_usd: number;
  gb_seconds: number;
  projected_usd: number;
  budget_usd: number | null;
  stopped: string | null;
  phases?: IPhases;
  /** The job whose failed items this one re-runs. */
  rerun_of?: string | null;
  /** Its newest re-run (accounting.link_reruns): what the views show of the link. */
  rerun_by?: IRerunLink;
}

export interface IRerunLink {
  job_id: string;
  state: string;
  outcome: string;
  text: string;
}

/** Where the tasks' time went (executor/cloudbutton_executor/phases.py), summed. */
export interface IPhases {
  seconds: { [phase: string]: number };
  total_s: number;
  tasks: number;
}

export interface ITaskDetail {
  task: string;
  items: [number, number];
  state: string;
  ok: number;
  failed: number;
  attempt: number;
  cold_start: boolean | null;
  peak_mem_mb: number | null;
  infra: { kind: string; message: string } | null;
  t: { [key: string]: number | null };
  /** Its first items: a short repr of the input (null if not kept) and the stdout. */
  item_detail?: { i: number; input: string | null; stdout: string }[];
}

export interface IFailure {
  i: number;
  task: string;
  type: string;
  message: string;
  kind: string | null;
  traceback: string;
  stdout: string;
}

export interface IJobDetail extends IJobSummary {
  tasks_detail: ITaskDetail[];
  failures: IFailure[];
}

/** An error with the HTTP status, so callers can tell "no such job" from "no server extension". */
export class ApiError extends Error {
  constructor(
    message: string,
    readonly status: number
  ) {
    super(message);
  }
}

export const MISSING_EXTENSION =
  'The cloudbutton server extension did not answer: is the server extension enabled? ' +
  '(jupyter server extension enable cloudbutton_jupyter, then restart JupyterLab)';

export async function requestAPI<T>(
  endPoint: string,
  init: RequestInit = {}
): Promise<T> {
  const settings = ServerConnection.makeSettings();
  const url = URLExt.join(settings.baseUrl, 'cloudbutton', endPoint);
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, settings);
  } catch (error) {
    throw new ApiError(`cannot reach the Jupyter server: ${error}`, 0);
  }
  const text = await response.text();
  let data: any = text;
  try {
    data = text.length ? JSON.parse(text) : null;
  } catch {
    // an HTML error page: the route does not exist
  }
  if (!response.ok) {
    const isJobRoute = /^jobs\/[^/]+/.test(endPoint);
    if (response.status === 404 && (!isJobRoute || typeof data !== 'object')) {
      throw new ApiError(MISSING_EXTENSION, 404);
    }
    const message =
      (data && typeof data === 'object' && (data.message || data.reason)) ||
      `${response.status} ${response.statusText}`;
    throw new ApiError(message, response.status);
  }
  return data as T;
}

export const api = {
  getConfig: () => requestAPI<ICloudConfig>('config'),
  putConfig: (config: Partial<ICloudConfig>) =>
    requestAPI<ICloudConfig>('config', {
      method: 'PUT',
      body: JSON.stringify(config)
    }),
  backendStatus: (backend?: string) =>
    requestAPI<IBackendStatus>(
      'backend/status' +
        (backend ? `?backend=${encodeURIComponent(backend)}` : '')
    ),
  jobs: (limit = 30) => requestAPI<IJobSummary[]>(`jobs?limit=${limit}`),
  job: (id: string) => requestAPI<IJobDetail>(`jobs/${encodeURIComponent(id)}`),
  cancel: (id: string) =>
    requestAPI<{ cancelled: boolean; already: boolean }>(
      `jobs/${encodeURIComponent(id)}/cancel`,
      { method: 'POST' }
    )
};
