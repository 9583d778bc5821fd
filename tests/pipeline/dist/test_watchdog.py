"""The hang watchdog in a process of its own (it ends the process): no progress for its timeout -> one `error:`
line, its last words (the run lock released), exit code 8; a process stopped and resumed (SLURM's suspend) is not
hung; progress keeps it quiet. Timeouts of a second or two, the point of these tests; the training's own hang test
(tests/launch/submit/test_local.py) runs the watchdog with the real training and launcher."""

import signal
import subprocess
import sys
import time
from pathlib import Path

from pipeline.dist.exit_codes import HUNG
from tests.support import REPO

# A process watched with TIMEOUT_S; it says "watching" once the watchdog runs, then makes progress every 50 ms for
# TICKS ticks (none when TICKS is 0: it hangs), then stops watching and exits with 0. Its last words remove a file.
WATCHED = """
import sys, time
from pathlib import Path
from pipeline.dist.watchdog import note_progress, start_watching, stop_watching
timeout_s, ticks, marker = float(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
start_watching(timeout_s / 60, "no progress (a test)", last_words=[marker.unlink])
print("watching", flush=True)
if not ticks:
    time.sleep(3600)
for _ in range(ticks):
    note_progress()
    time.sleep(0.05)
stop_watching()
print("done", flush=True)
"""


def _watched(timeout_s: float, ticks: int, marker: Path) -> subprocess.Popen:
    marker.write_text("held")
    proc = subprocess.Popen([sys.executable, "-c", WATCHED, str(timeout_s), str(ticks), str(marker)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "watching\n", proc.communicate()
    return proc


def test_no_progress_ends_the_process_with_one_line_its_last_words_and_exit_code_8(tmp_path):
    proc = _watched(1.0, 0, tmp_path / "run.lock")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == HUNG, err
    assert err.splitlines() == ["error: no progress (a test)"]
    assert not (tmp_path / "run.lock").exists()  # its last words ran


def test_progress_keeps_it_quiet(tmp_path):
    proc = _watched(1.0, 60, tmp_path / "run.lock")  # 3 s of progress, three times the timeout
    out, err = proc.communicate(timeout=120)
    assert (proc.returncode, out, err) == (0, "done\n", "")
    assert (tmp_path / "run.lock").exists()


# A process watched with a 3-s timeout whose progress is each line the test writes to it (each one acknowledged,
# until its stdin closes).
FED = """
import sys
from pipeline.dist.watchdog import note_progress, start_watching, stop_watching
start_watching(3 / 60, "no progress (a test)")
print("watching", flush=True)
for _ in sys.stdin:
    note_progress()
    print("noted", flush=True)
stop_watching()
print("done", flush=True)
"""


def test_a_process_stopped_longer_than_the_timeout_is_not_hung():
    """SLURM's suspend stops every process of a job (SIGSTOP), for as long as it likes: resumed, the training goes
    on. The watchdog was stopped too, so it knows that the pause was not the training's: resumed, it gives the
    training its whole timeout again (here it would fire at once, long before the next progress, were the pause
    counted)."""
    proc = subprocess.Popen([sys.executable, "-c", FED], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "watching\n"
    proc.stdin.write("progress\n")
    proc.stdin.flush()
    assert proc.stdout.readline() == "noted\n"
    proc.send_signal(signal.SIGSTOP)
    time.sleep(5)  # the pause under test: longer than the timeout
    proc.send_signal(signal.SIGCONT)
    time.sleep(1.5)  # half the timeout: enough for the watchdog to look (every 0.3 s), far from its end
    proc.stdin.write("progress\n")
    out, err = proc.communicate(timeout=120)
    assert (proc.returncode, out, err) == (0, "noted\ndone\n", ""), err
