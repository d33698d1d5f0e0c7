import {
  ILabShell,
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { INotebookTracker } from '@jupyterlab/notebook';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { LabIcon } from '@jupyterlab/ui-components';
import { addJobOutputRenderer } from './joboutput';
import { CloudSidebar } from './sidebar';

const PLUGIN_ID = 'cloudbutton-jupyter:plugin';

namespace CommandIDs {
  export const open = 'cloudbutton:open';
  export const runCell = 'cloudbutton:run-cell';
  export const refresh = 'cloudbutton:refresh';
}

const CLOUD_SVG =
  '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" width="16" height="16">' +
  '<path class="jp-icon3" fill="#616161" d="M19.35 10.04A7.49 7.49 0 0 0 12 4C9.11 4 ' +
  '6.6 5.64 5.35 8.04A5.994 5.994 0 0 0 0 14c0 3.31 2.69 6 6 6h13c2.76 0 5-2.24 5-5 ' +
  '0-2.64-2.05-4.78-4.65-4.96zM14 13v4h-4v-4H7l5-5 5 5h-3z"/></svg>';

export const cloudIcon = new LabIcon({
  name: 'cloudbutton:cloud',
  svgstr: CLOUD_SVG
});

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description:
    'A "Cloud" sidebar: run the current cell over a list on stateless workers, follow and cancel jobs.',
  autoStart: true,
  requires: [INotebookTracker],
  optional: [ICommandPalette, ILayoutRestorer, ILabShell, ISettingRegistry],
  activate: (
    app: JupyterFrontEnd,
    tracker: INotebookTracker,
    palette: ICommandPalette | null,
    restorer: ILayoutRestorer | null,
    labShell: ILabShell | null,
    settings: ISettingRegistry | null
  ) => {
    // An ended job's cell output: its live widget while the kernel has it (joboutput.ts).
    tracker.forEach(addJobOutputRenderer);
    tracker.widgetAdded.connect((_, nb) => addJobOutputRenderer(nb));
    const panel = new CloudSidebar(tracker);
    panel.title.icon = cloudIcon;
    app.shell.add(panel, 'left', { rank: 950 });
    if (restorer) {
      restorer.add(panel, panel.id);
    }

    app.commands.addCommand(CommandIDs.open, {
      label: 'Cloud: Show Panel',
      caption: 'Open the Cloud sidebar',
      icon: cloudIcon,
      execute: () => app.shell.activateById(panel.id)
    });
    app.commands.addCommand(CommandIDs.runCell, {
      label: args => (args.toolbar ? '' : 'Cloud: Run Cell Over List…'),
      caption:
        'Run the selected cell once per element of a list, on stateless workers',
      icon: cloudIcon,
      isEnabled: () => tracker.currentWidget !== null,
      execute: async () => {
        // The panel holds the iterable: show it so errors and the job are visible.
        if (!panel.isVisible) {
          app.shell.activateById(panel.id);
        }
        await panel.run.runActiveCell();
      }
    });
    app.commands.addCommand(CommandIDs.refresh, {
      label: 'Cloud: Refresh Backend Status',
      execute: () => panel.settings.refreshStatus()
    });
    if (palette) {
      for (const command of [
        CommandIDs.open,
        CommandIDs.runCell,
        CommandIDs.refresh
      ]) {
        palette.addItem({ command, category: 'Cloud' });
      }
    }
    // Loading the settings makes the schema's toolbar items and shortcut known to JupyterLab.
    if (settings) {
      void settings.load(PLUGIN_ID).catch(reason => {
        console.warn('cloudbutton: cannot load settings', reason);
      });
    }
    void labShell;
  }
};

export default plugin;
