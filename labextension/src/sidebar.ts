// The "Cloud" sidebar: three small widgets in one layout, as dask-labextension's sidebar
// composes its dashboard and clusters widgets.
import { INotebookTracker } from '@jupyterlab/notebook';
import { PanelLayout, Widget } from '@lumino/widgets';
import { JobsSection } from './jobs';
import { RunSection } from './run';
import { SettingsSection } from './settings';

export class CloudSidebar extends Widget {
  constructor(tracker: INotebookTracker) {
    super();
    this.id = 'cloudbutton-panel';
    this.addClass('cb-Panel');
    this.title.caption = 'Cloud: run cells on stateless workers';
    const layout = (this.layout = new PanelLayout());
    this.settings = new SettingsSection();
    this.run = new RunSection(tracker, async () => {
      if (!this.settings.config) {
        await this.settings.loadConfig();
      }
      return this.settings.config;
    });
    this.jobs = new JobsSection(tracker);
    // A new job appears in storage a moment after the run starts.
    this.run.started.connect(() =>
      setTimeout(() => void this.jobs.refresh(), 700)
    );
    this.run.finished.connect(() => void this.jobs.refresh());
    // The job list follows the backend's storage.
    this.settings.configChanged.connect(() => void this.jobs.refresh());
    layout.addWidget(this.settings);
    layout.addWidget(this.run);
    layout.addWidget(this.jobs);
    void this.settings.loadConfig();
  }

  protected onAfterShow(): void {
    this.run.updateTarget();
  }

  readonly settings: SettingsSection;
  readonly run: RunSection;
  readonly jobs: JobsSection;
}
