from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hqpy.common.durations import format_duration, format_hms, format_makespan, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("2s", 2.0),
        ("1s 200ms", 1.2),
        ("30m", 1800.0),
        ("1h", 3600.0),
        ("1h 30m", 5400.0),
        ("1h30m", 5400.0),
        ("3h 15m 10s", 11710.0),
        ("  10s  ", 10.0),
        ("1d", 86400.0),
        ("2days", 172800.0),
        ("1hour 1min 1sec", 3661.0),
        ("2hours", 7200.0),
        ("1hr", 3600.0),
        ("1500us", 0.0015),
        ("1000000ns", 0.001),
        ("1.5h", 5400.0),
        ("0", 0.0),
    ],
)
def test_parse_duration_accepts_humantime(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("01:10:15", 4215.0),
        ("1-00:00:00", 86400.0),
        ("2-01:00:30", 2 * 86400 + 3600 + 30),
        ("10:00", 600.0),
        ("00:00:05", 5.0),
        ("48:00:00", 172800.0),
    ],
)
def test_parse_duration_accepts_clock_format(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text", ["", "1x", "abc", "1h x", "-1s", "1 h 2", "10:60", "01:60:00", "1-00:00", "h"]
)
def test_parse_duration_rejects_garbage_with_the_expected_form(text: str) -> None:
    with pytest.raises(ValueError, match="expected e.g. 30s, 1h 30m, 500ms or HH:MM:SS"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["90", " 90 ", "1.5", "3600", "10" * 30])
def test_parse_duration_refuses_a_bare_number_with_corrected_examples(text: str) -> None:
    number = text.strip()[:20]
    with pytest.raises(ValueError, match="time unit needed") as info:
        parse_duration(text)
    assert f"for example {number}" in str(info.value)
    assert "1h 30m or 01:30:00" in str(info.value)


def test_parse_duration_bare_zero_needs_no_unit() -> None:
    assert parse_duration("0") == 0.0
    assert parse_duration("0.0") == 0.0


def test_parse_duration_error_names_input() -> None:
    with pytest.raises(ValueError, match=r"^invalid duration '1x': expected e\.g\. 30s"):
        parse_duration("1x")


def test_parse_duration_units_are_case_sensitive_like_humantime() -> None:
    assert parse_duration("1M") != parse_duration("1m")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.5, "500ms"),
        (3, "3s"),
        (10, "10s"),
        (1.2, "1s 200ms"),
        (3529, "58m 49s"),
        (3600, "1h"),
        (4215, "1h 10m 15s"),
        (11710, "3h 15m 10s"),
        (7200.001, "2h 1ms"),
        (345600, "96h"),
        (0.0004, "0s"),
        (0.0006, "1ms"),
        (-5, "0s"),
    ],
)
def test_format_duration_uses_h_m_s_ms_without_zero_parts(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.345, "345ms"),
        (1.0129, "1s 12ms"),
        (1.012, "1s 12ms"),
        (1.001, "1s 1ms"),
        (59.9999, "59s 999ms"),
        (3529.7, "58m 49s"),
        (61.5, "1m 1s"),
        (4215.9, "1h 10m"),
        (7259.0, "2h"),
        (0.0, "0s"),
    ],
)
def test_format_makespan_truncates_by_magnitude(seconds: float, text: str) -> None:
    assert format_makespan(seconds) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "00:00:00"),
        (4215, "01:10:15"),
        (345600, "96:00:00"),
        (59.9, "00:00:59"),
        (360000, "100:00:00"),
    ],
)
def test_format_hms_zero_pads_and_never_folds_days(seconds: float, text: str) -> None:
    assert format_hms(seconds) == text


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_formatters_reject_non_finite(value: float) -> None:
    for fmt in (format_duration, format_makespan, format_hms):
        with pytest.raises(ValueError, match="finite"):
            fmt(value)


@given(st.integers(min_value=0, max_value=10**10))
def test_format_then_parse_round_trips_whole_milliseconds(ms: int) -> None:
    seconds = ms / 1000
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.integers(min_value=0, max_value=10**7))
def test_format_hms_parses_back_to_whole_seconds(secs: int) -> None:
    assert parse_duration(format_hms(secs)) == secs


@given(st.floats(min_value=0, max_value=1e7, allow_nan=False))
def test_makespan_never_exceeds_duration(seconds: float) -> None:
    assert parse_duration(format_makespan(seconds)) <= parse_duration(format_duration(seconds))
