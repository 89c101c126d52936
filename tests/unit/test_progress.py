"""The progress display: every bar closes when its stage ends, so its time and rate are that stage's."""

from __future__ import annotations

from autointerp.cli.base import Bars
from autointerp.records import ProgressEvent


def test_a_bar_closes_when_its_stage_ends_and_the_next_stage_gets_its_own(capsys):
    bars = Bars()
    bars(ProgressEvent("collect", 50, 100, "tok"))
    collect = bars.bars["collect"]
    bars(ProgressEvent("collect", 100, 100, "tok"))
    assert "collect" not in bars.bars and collect.disable  # closed: tqdm disables a bar it closed
    bars(ProgressEvent("collect", 100, 100, "tok"))  # a finished stage repeating its end opens nothing
    assert "collect" not in bars.bars
    bars(ProgressEvent("label", 1, 4, "feat"))
    label = bars.bars["label"]
    assert label is not collect and label.n == 1 and label.start_t >= collect.start_t
    bars(ProgressEvent("nulls", 0, 2, "feat"))
    assert set(bars.bars) == {"label", "nulls"}
    bars.close()
    assert not bars.bars and label.disable
    err = capsys.readouterr().err
    assert "collect: 100%" in err and "100/100" in err
