// A job's cell output: the live widget (its timeline bars open a task's detail on a
// click, after the job too) while the kernel that made it still has its model, the
// static rendering otherwise. The kernel sends both: a reference to the widget (JOB_MIME,
// see kernel_magic/cloudbutton_magic/widget.py JOB_VIEW) and the static rendering as
// text/html, refreshed every few seconds while the job runs, which every viewer without
// this renderer shows instead (with the widget view while the job runs, if it has one).
import type { IRenderMime } from '@jupyterlab/rendermime-interfaces';
import type { NotebookPanel } from '@jupyterlab/notebook';
import { Panel } from '@lumino/widgets';

export const JOB_MIME = 'application/vnd.cloudbutton.job+json';
const WIDGET_MIME = 'application/vnd.jupyter.widget-view+json';

type Registry = NotebookPanel['content']['rendermime'];

function mimeModel(
  trusted: boolean,
  mimeType: string,
  value: unknown
): IRenderMime.IMimeModel {
  return {
    trusted,
    data: { [mimeType]: value } as IRenderMime.IMimeModel['data'],
    metadata: {},
    setData: () => undefined
  };
}

export class JobOutput extends Panel implements IRenderMime.IRenderer {
  constructor(registry: Registry) {
    super();
    this._registry = registry;
    this.addClass('cb-job-output');
  }

  async renderModel(model: IRenderMime.IMimeModel): Promise<void> {
    this._model = model;
    const ref = model.data[JOB_MIME] as { model_id?: string } | undefined;
    if (ref?.model_id && ref.model_id === this._liveId) {
      // The kernel refreshed the static rendering (a running job's, every few seconds,
      // or the ended job's): the live view shown stays, it updates itself.
      return;
    }
    this._liveId = null;
    this.removeClass('cb-job-output-live');
    await this._showStatic();
    if (!ref?.model_id || !this._registry.getFactory(WIDGET_MIME)) {
      return; // no widget manager in this notebook: the static rendering it is
    }
    const live = this._registry.createRenderer(WIDGET_MIME) as Panel &
      IRenderMime.IRenderer;
    this.addWidget(live); // shown while it renders: bokeh lays out only what is visible
    await live.renderModel(
      mimeModel(true, WIDGET_MIME, {
        model_id: ref.model_id,
        version_major: 2,
        version_minor: 0
      })
    );
    // The widget renderer adds the view as its child when the kernel has the model, and
    // otherwise writes an error (a new kernel) or waits (a manager not restored yet).
    const view = live.widgets[0];
    if (!view || this._model !== model) {
      live.dispose();
      return;
    }
    for (const old of this.widgets.filter(w => w !== live)) {
      old.dispose(); // one rendering in the page, not a hidden twin
    }
    this._liveId = ref.model_id;
    this.addClass('cb-job-output-live');
    // The kernel restarted or closed the widget: back to the latest static rendering.
    view.disposed.connect(() => {
      if (this._liveId === ref.model_id && !this.isDisposed) {
        this._liveId = null;
        this.removeClass('cb-job-output-live');
        live.dispose();
        void this._showStatic();
      }
    });
  }

  private async _showStatic(): Promise<void> {
    for (const old of [...this.widgets]) {
      old.dispose();
    }
    const model = this._model;
    if (!model) {
      return;
    }
    const html = this._registry.createRenderer('text/html');
    this.addWidget(html);
    await html.renderModel(
      mimeModel(model.trusted, 'text/html', model.data['text/html'] ?? '')
    );
  }

  private _registry: Registry;
  private _model: IRenderMime.IMimeModel | null = null;
  private _liveId: string | null = null;
}

/** Let the notebook's outputs of ended jobs render with `JobOutput`. */
export function addJobOutputRenderer(panel: NotebookPanel): void {
  const registry = panel.content.rendermime;
  if (registry.getFactory(JOB_MIME)) {
    return;
  }
  registry.addFactory(
    {
      // Not safe: it may show a widget, which runs code; an untrusted output falls back
      // to its sanitised text/html.
      safe: false,
      mimeTypes: [JOB_MIME],
      createRenderer: () => new JobOutput(registry)
    },
    -20 // before the widget view (-10) that a running job's output carries too
  );
}
