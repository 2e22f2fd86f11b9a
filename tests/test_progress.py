"""Progress: a bar on a terminal; elsewhere a heartbeat line on stderr every interval, with the step,
the count done, the time so far and an ETA. Time comes from a fake clock: no test waits or times."""

import io
import sys

import numpy as np
import pytest
import torch
from torch import nn
from tqdm.std import tqdm

from goodnet import progress as progress_module
from goodnet.progress import INTERVAL_VARIABLE, eta, format_duration, heartbeat_interval, progress


class FakeClock:
    """Returns `now`, then moves it on by `step` (the loops below may also move it themselves)."""

    def __init__(self, step: float = 0.0):
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        now, self.now = self.now, self.now + self.step
        return now


class Stream(io.StringIO):
    def __init__(self, terminal: bool):
        super().__init__()
        self.terminal = terminal

    def isatty(self) -> bool:
        return self.terminal


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(progress_module, "_clock", fake)
    monkeypatch.delenv(INTERVAL_VARIABLE, raising=False)
    return fake


@pytest.fixture
def log(capsys):
    """stderr as in CI logs, nohup or a notebook: not a terminal (pytest's capture, read by `lines`)."""
    assert not sys.stderr.isatty()
    return capsys


def lines(log) -> list[str]:
    """What was written on stderr since the last call."""
    return log.readouterr().err.splitlines()


def test_durations_and_eta():
    assert format_duration(0.4) == "0 s" and format_duration(59.6) == "1 min 0 s"
    assert format_duration(725) == "12 min 5 s" and format_duration(12000) == "3 h 20 min"
    assert eta(10.0, 0, 8) == "ETA unknown" and eta(10.0, 8, 8) == "done"
    assert eta(30.0, 3, 8) == "ETA 50 s"  # 10 s a cell, 5 cells left


def test_a_long_step_beats_every_interval_with_its_count_and_eta(clock, log):
    seen = []
    for epoch in progress(range(10), "fine-tune epochs"):
        seen.append(epoch)
        clock.now += 4  # 4 s an epoch; a line is due every 10 s, checked as each epoch ends
    assert seen == list(range(10))  # the items, all of them, in order
    assert lines(log) == [
        "goodnet: fine-tune epochs 3/10, 12 s elapsed, ETA 28 s",
        "goodnet: fine-tune epochs 6/10, 24 s elapsed, ETA 16 s",
        "goodnet: fine-tune epochs 9/10, 36 s elapsed, ETA 4 s",
    ]


def test_a_step_shorter_than_the_interval_prints_nothing(clock, log):
    for _ in progress(range(1000), "sweep clean_valid"):
        clock.now += 0.009  # 9 s in all
    assert lines(log) == []


def test_no_desc_is_silent_and_hands_back_the_items(clock, log):
    items = [1, 2, 3]
    assert progress(items, None) is items
    for _ in progress(range(50), None):
        clock.now += 60
    assert lines(log) == []


def test_an_unknown_total_shows_the_count_and_time_without_eta(clock, log):
    for _ in progress((k for k in range(5)), "reversing triggers"):
        clock.now += 7
    assert lines(log) == [
        "goodnet: reversing triggers 2 done, 14 s elapsed",
        "goodnet: reversing triggers 4 done, 28 s elapsed",
    ]


def test_nested_steps_share_one_pace_and_one_line(clock, log):
    """A cell's epochs and the cell itself: one line per interval, naming both; the cell's own line
    (due as the cell ends) is left out when its epochs printed less than an interval before."""
    for _ in progress(range(2), "grid cells"):
        for _ in progress(range(4), "epochs"):
            clock.now += 3
    assert lines(log) == [
        "goodnet: grid cells 0/2 > epochs 4/4, 12 s elapsed, done",
        "goodnet: grid cells 1/2 > epochs 4/4, 12 s elapsed, done",
    ]
    for _ in progress(range(2), "grid cells"):
        for _ in progress(range(5), "epochs"):
            clock.now += 3
        clock.now += 8  # the cell's evaluation, after its epochs
    assert lines(log) == [
        "goodnet: grid cells 0/2 > epochs 4/5, 12 s elapsed, ETA 3 s",
        "goodnet: grid cells 1/2, 23 s elapsed, ETA 23 s",
        "goodnet: grid cells 1/2 > epochs 4/5, 12 s elapsed, ETA 3 s",
        "goodnet: grid cells 2/2, 46 s elapsed, done",
    ]


def test_the_interval_comes_from_the_environment(clock, log, monkeypatch):
    assert heartbeat_interval() == 10
    for text, interval in [("2.5", 2.5), (" 30 ", 30), ("0", None), ("-1", None), ("often", 10), ("nan", 10)]:
        monkeypatch.setenv(INTERVAL_VARIABLE, text)
        assert heartbeat_interval() == interval, text
    monkeypatch.setenv(INTERVAL_VARIABLE, "2")
    for _ in progress(range(3), "rounds"):
        clock.now += 1
    assert lines(log) == ["goodnet: rounds 2/3, 2 s elapsed, ETA 1 s"]
    monkeypatch.setenv(INTERVAL_VARIABLE, "0")  # off
    for _ in progress(range(3), "rounds"):
        clock.now += 100
    assert lines(log) == []


def test_a_terminal_still_gets_the_bar_and_no_heartbeat(clock, monkeypatch):
    terminal = Stream(terminal=True)
    monkeypatch.setattr(sys, "stderr", terminal)
    shown = progress(range(3), "epochs")
    assert isinstance(shown, tqdm)
    for _ in shown:
        clock.now += 60
    assert "epochs" in terminal.getvalue() and "goodnet:" not in terminal.getvalue()


def test_a_broken_stderr_never_stops_the_work(clock, monkeypatch):
    broken = Stream(terminal=False)
    broken.close()
    monkeypatch.setattr(sys, "stderr", broken)
    done = []
    for k in progress(range(5), "epochs"):
        done.append(k)
        clock.now += 20
    assert done == list(range(5))


def _train(progress_setting):
    from goodnet.models.training import train_classifier

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    x = np.random.default_rng(0).random((8, 1, 2, 2), dtype=np.float32)
    y = np.array([0, 1] * 4, dtype=np.int64)
    train_classifier(model, x, y, epochs=3, seed=0, batch_size=4, progress=progress_setting)
    return model


def test_training_beats_with_its_loss_and_quiet_training_does_not(monkeypatch, log):
    """What --quiet passes (progress=False) prints nothing however long it takes; a heartbeat never
    changes the weights."""
    monkeypatch.delenv(INTERVAL_VARIABLE, raising=False)
    monkeypatch.setattr(progress_module, "_clock", FakeClock(step=6))  # an epoch: 6 s
    loud = _train(True)
    (line,) = lines(log)
    assert line.startswith("goodnet: training BadNet 2/3, 12 s elapsed, ETA 6 s, loss=")
    monkeypatch.setattr(progress_module, "_clock", FakeClock(step=600))
    quiet = _train(False)
    assert lines(log) == []
    for a, b in zip(loud.state_dict().values(), quiet.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_quiet_on_the_command_line_turns_progress_off(monkeypatch, tmp_path):
    """`--quiet` reaches the library as progress=False, which gives every step desc=None."""
    import goodnet.attack
    from goodnet.cli import main
    from goodnet.errors import SettingsError

    asked = []

    def attack_files(settings, out_dir, cache_dir=None, progress=True, data=None):
        asked.append(progress)
        raise SettingsError("stopped by the test")

    monkeypatch.setattr(goodnet.attack, "attack_files", attack_files)
    out = str(tmp_path / "x")
    assert main(["attack", "--kind", "patch", "--out", out, "--quiet"]) == 2
    assert main(["attack", "--kind", "patch", "--out", out]) == 2
    assert asked == [False, True]
