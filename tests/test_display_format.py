"""Money and durations read the same everywhere: the executor's ``format_usd`` (widget,
text progress, CLI) and the widget's ``fmt_seconds`` against the panel's ``formatUsd`` and
``formatDuration`` (labextension/src/dom.ts, run here with node)."""
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from cloudbutton_executor.units import format_usd
from cloudbutton_magic.widget import fmt_seconds

ROOT = Path(__file__).resolve().parent.parent
VALUES = [0, -1, 7e-06, 9.9999e-05, 0.0001, 0.00015, 0.00019, 0.00025, 0.0123, 0.1, 0.5,
          0.99996, 1, 1.005, 1.015, 2.675, 0.03125, 0.09375, 2.125, 2.375, 1234.5, 1234567.891]
SECONDS = [0, 0.004, 0.125, 0.375, 9.994, 9.996, 10, 10.25, 10.75, 13.64, 59.96, 60, 61.5, 125.9,
           3599, 3600, 3725]


def test_python_format():
    assert format_usd(0.00019) == "$0.0002"
    assert format_usd(7e-06) == "< $0.0001"
    assert format_usd(0) == "$0"
    assert format_usd(0.5) == "$0.50"
    assert format_usd(0.0123) == "$0.0123"
    assert format_usd(1234.5) == "$1,234.50"
    assert format_usd(None) == "—"


def _in_node(expression: str):
    lib = ROOT / "lib" / "dom.js"
    if not lib.exists():
        pytest.skip("the labextension is not built (lib/dom.js)")
    script = lib.read_text() + f"\nconsole.log(JSON.stringify({expression}));"
    out = subprocess.run(["node", "--input-type=module", "-e", script], capture_output=True,
                         text=True, check=True).stdout
    return json.loads(out)


@pytest.mark.skipif(not shutil.which("node"), reason="needs node")
def test_panel_formats_money_and_time_as_python_does():
    assert _in_node(f"{json.dumps(VALUES)}.map(formatUsd)") == [format_usd(v) for v in VALUES]
    assert _in_node(f"{json.dumps(SECONDS)}.map(formatDuration)") == [fmt_seconds(s) for s in SECONDS]
