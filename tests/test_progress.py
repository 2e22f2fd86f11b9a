"""Progress of long grids: cells done / total and a time left at the pace so far."""

from goodnet.progress import eta, format_duration


def test_durations_and_eta():
    assert format_duration(0.4) == "0 s" and format_duration(59.6) == "1 min 0 s"
    assert format_duration(725) == "12 min 5 s" and format_duration(12000) == "3 h 20 min"
    assert eta(10.0, 0, 8) == "ETA unknown" and eta(10.0, 8, 8) == "done"
    assert eta(30.0, 3, 8) == "ETA 50 s"  # 10 s a cell, 5 cells left
