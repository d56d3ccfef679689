"""Console lines fit the terminal's width: wrapped, never cut (pipeline.console and its users)."""

import os
from pathlib import Path

import pytest

from pipeline.cluster.progress import say
from pipeline.console import FALLBACK_WIDTH, console_width, fit, wrap
from pipeline.stage import run_stage

REPO = Path(__file__).resolve().parents[1]
LINE = ("  [12/18] images-logit_adjusted-r2: validation WER 0.0984 at epoch 7 of 8 (31 s); "
        "about 95 s to go -> models/a-long-dataset-name/finetune/images-logit_adjusted-r2/outcome")


def words(lines):
    return " ".join(line.strip() for line in lines).split()


def squashed(text_or_lines):
    """The characters besides white space, in order: what wrapping must keep."""
    text = text_or_lines if isinstance(text_or_lines, str) else "".join(text_or_lines)
    return "".join(text.split())


def test_the_width_is_the_terminals_and_100_where_there_is_none(monkeypatch):
    monkeypatch.setenv("COLUMNS", "72")
    assert console_width() == 72
    monkeypatch.delenv("COLUMNS")

    def no_terminal(*args):
        raise OSError("not a terminal")

    monkeypatch.setattr(os, "get_terminal_size", no_terminal)
    assert console_width() == FALLBACK_WIDTH == 100


@pytest.mark.parametrize("width", [40, 64, 100, 200])
def test_wrapping_keeps_every_word_in_order_within_the_width(width):
    lines = wrap(LINE, width)
    assert all(len(line) <= width for line in lines)
    assert squashed(lines) == squashed(LINE)  # nothing lost at either end
    shorter = [word for word in LINE.split() if len(word) <= width - 4]
    assert [word for word in words(lines) if word in shorter] == shorter  # split only words longer than a line
    assert lines[0].startswith("  [12/18] images-logit_adjusted-r2:")
    assert all(line.startswith("    ") for line in lines[1:])  # continuation: two more than the line's own indent
    if len(LINE) <= width:
        assert lines == [LINE]  # a line that fits is left as it is
    assert fit(LINE, width) == "\n".join(lines)


def test_a_word_longer_than_the_line_is_split_not_dropped():
    path = "results/" + "deep/" * 20 + "summary.json"
    lines = wrap(f"outputs: {path}", 40)
    assert all(len(line) <= 40 for line in lines) and squashed(lines) == f"outputs:{path}"


def test_the_stages_progress_lines_wrap(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "60")
    say(LINE)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) > 1 and all(len(line) <= 60 for line in lines) and squashed(lines) == squashed(LINE)


def test_a_stages_closing_line_wraps(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "50")
    run_stage("demo", lambda config: LINE.strip(), params=str(REPO / "params.yaml"))
    lines = capsys.readouterr().out.splitlines()
    assert all(len(line) <= 50 for line in lines)
    assert lines[0].startswith("demo: [12/18] images-logit_adjusted-r2:")
    assert squashed(lines).startswith("demo:" + squashed(LINE) + "(") and lines[-1].endswith(" s)")
