import io
import logging
import re
import sys
import threading
from types import SimpleNamespace

import pytest

from rlengine.tracking import Tracker, setup_logging

METRICS = {"reward/mean": 0.5, "actor/pg_loss": 0.25, "timing_s/step": 1.5}
LINES = [f"step {i}: reward=0.5 pg_loss=0.25 step_s=1.5" for i in (1, 2, 3)]


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def render(text: str) -> list[str]:
    """What a terminal shows: '\\r' returns to column 0 and later characters overwrite."""
    shown = []
    for raw in text.split("\n"):
        cells: list[str] = []
        col = 0
        for ch in raw:
            if ch == "\r":
                col = 0
                continue
            if col < len(cells):
                cells[col] = ch
            else:
                cells.append(ch)
            col += 1
        shown.append("".join(cells).rstrip())
    return shown


def cfg(progress_bar: bool = True):
    return SimpleNamespace(tensorboard=False, wandb=False, progress_bar=progress_bar)


@pytest.fixture
def restore_logging():
    yield
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_rlengine", False):
            root.removeHandler(h)
            h.close()


def drive(tmp_path, stream, progress_bar=True):
    setup_logging(tmp_path, stream)
    t = Tracker(tmp_path, cfg(progress_bar), 3, {}, stream=stream)
    for i in (1, 2, 3):
        logging.getLogger("rlengine").info("note %d", i)
        t.log(i, METRICS)
    t.close()
    return stream.getvalue()


def test_lines_print_whole_above_one_bar(tmp_path, restore_logging):
    out = drive(tmp_path, FakeTTY())
    raw = out.split("\n")
    wanted = [re.escape(ln) for ln in LINES] + [rf"\d\d:\d\d:\d\d INFO rlengine: note {i}" for i in (1, 2, 3)]
    for want in wanted:
        hits = [ln for ln in raw if re.search(want, ln)]
        assert len(hits) == 1, (want, out)
        # The line is written whole after the bar is cleared, and the cleared bar leaves nothing visible.
        assert re.fullmatch(want, hits[0].split("\r")[-1]), repr(hits[0])
        assert re.fullmatch(want, render(hits[0])[0]), repr(hits[0])
    shown = [ln for ln in render(out) if ln]
    assert [ln for ln in shown if ln.startswith("step ")] == LINES
    bars = [ln for ln in shown if ln.startswith("steps:")]
    assert len(bars) == 1 and "3/3" in bars[0] and shown[-1] == bars[0], shown
    assert (tmp_path / "run.log").read_text().count("step 2: ") == 1


def test_no_bar_off_a_terminal(tmp_path, restore_logging):
    out = drive(tmp_path, io.StringIO())
    assert "\r" not in out and "steps:" not in out
    assert [ln for ln in out.splitlines() if ln.startswith("step ")] == LINES


def test_progress_bar_off(tmp_path, restore_logging):
    out = drive(tmp_path, FakeTTY(), progress_bar=False)
    assert "\r" not in out and [ln for ln in out.splitlines() if ln.startswith("step ")] == LINES


def test_other_writers_land_above_the_bar(tmp_path, monkeypatch):
    tty = FakeTTY()
    monkeypatch.setattr(sys, "stderr", tty)
    t = Tracker(tmp_path, cfg(), 3, {})
    t.log(1, METRICS)
    # Ray prints worker output from a thread of its own, in pieces (text, then the newline).
    th = threading.Thread(target=lambda: print("(Worker pid=1) hello", file=sys.stderr))
    th.start()
    th.join()
    t.log(2, METRICS)
    t.close()
    assert sys.stderr is tty
    raw = [ln for ln in tty.getvalue().split("\n") if "hello" in ln]
    assert len(raw) == 1 and raw[0].split("\r")[-1] == "(Worker pid=1) hello", raw
