"""A demo's stderr, redirected to a file, holds streamlearn's own lines: no colour codes around the actors'
forwarded output, no Ray warning about constructor arguments in the object store or about token auth."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[2]
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

# Loaded by every Python process of the run: an actor process prints one line once it has imported the actors'
# module, so the run has forwarded actor output whose prefix Ray would colour.
PROBE = '''import sys
if any("default_worker" in a for a in sys.argv):
    import threading, time

    def probe():
        while "streamlearn.actors" not in sys.modules:
            time.sleep(0.01)
        print("probe: a line from an actor", file=sys.stderr, flush=True)

    threading.Thread(target=probe, daemon=True).start()
'''


def test_redirected_demo_stderr_is_plain_and_has_no_ray_warnings(tmp_path: Path) -> None:
    (tmp_path / "sitecustomize.py").write_text(PROBE)
    # a user's environment: none of the RAY_* settings this test session made
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "STREAMLEARN_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(tmp_path)])
    err_path = tmp_path / "err.txt"
    with err_path.open("w") as err:
        proc = subprocess.run([sys.executable, "-m", "streamlearn.cli", "demo", "--events", "4000"], env=env,
                              stdout=subprocess.PIPE, stderr=err, text=True, timeout=300, check=False)
    stderr = err_path.read_text()
    assert proc.returncode == 0, stderr[-3000:]
    assert "WorkerActor pid=" in stderr and "probe: a line from an actor" in stderr, stderr[-3000:]
    assert not ANSI.search(stderr), stderr[-3000:]
    assert "core_worker.cc" not in stderr and "restart will fail" not in stderr, stderr[-3000:]
    assert "Token authentication" not in stderr, stderr[-3000:]
    assert not [line for line in stderr.splitlines() if re.match(r"\[\d{4}-\d\d-\d\d .* [EW] \d+ \d+\]", line)]
    assert '"events_consumed"' in proc.stdout
