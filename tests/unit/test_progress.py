"""Progress in a job's log: without a terminal, lines with the step of steps, the rate, the time spent
and left; a heartbeat when one step takes longer than a minute; and a failing job's last line is its
error, not its progress."""

from __future__ import annotations

import io
import time

import pytest

from lwpar.core.progress import Progress


def test_without_a_terminal_progress_is_written_as_lines():
    log = io.StringIO()
    with Progress(4, "epoch 1/2", items="images", every=0, stream=log) as progress:
        for _ in range(4):
            progress.update(items=8, note="loss 0.500")
    lines = log.getvalue().splitlines()
    assert len(lines) == 5  # one per step (every=0), and the last at the end
    assert lines[1].startswith("epoch 1/2: step 2 of 4 (50 %), ") and "images/s" in lines[1]
    assert "spent, about" in lines[1] and lines[1].endswith("left; loss 0.500")
    assert lines[-1].startswith("epoch 1/2: step 4 of 4 (100 %)")


def test_a_quiet_step_still_gets_a_line_from_the_heartbeat():
    log = io.StringIO()
    progress = Progress(3, "decompose", unit="layer", every=3600, heartbeat=0.05, stream=log)
    progress.update()
    deadline = time.monotonic() + 10  # generous: the heartbeat wakes every 12 ms
    while "layer 1 of 3" not in log.getvalue() and time.monotonic() < deadline:
        time.sleep(0.01)
    progress.close()
    assert "decompose: layer 1 of 3 (33 %)" in log.getvalue()


def test_a_failing_job_ends_with_its_error_not_its_progress():
    log = io.StringIO()
    with pytest.raises(RuntimeError):
        with Progress(None, "sensitivity", unit="probe", every=3600, stream=log) as progress:
            progress.update()
            raise RuntimeError("probe failed")
    assert log.getvalue() == ""  # no step reached the line interval, and the failure writes none


def test_a_terminal_gets_a_bar():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    log = Terminal()
    with Progress(2, "predict", unit="image", stream=log) as progress:
        progress.update()
        progress.update()
    assert "predict:" in log.getvalue() and "/2 [" in log.getvalue()  # a tqdm bar, not lines


def test_counted_batches_name_the_pass_count_images_and_stop_where_the_loader_is_cut():
    from itertools import islice

    from lwpar.core.progress import counted

    loader = [(list(range(8)), None)] * 5
    log = io.StringIO()
    seen = list(counted(islice(loader, 3), "BatchNorm re-estimation", 3, every=0, stream=log))
    assert len(seen) == 3
    lines = log.getvalue().splitlines()
    assert lines[-1].startswith("BatchNorm re-estimation: batch 3 of 3 (100 %)") and "images/s" in lines[-1]
    assert list(counted(loader, None)) == loader  # unnamed: silent, every batch
