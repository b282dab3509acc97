"""Durations as HyperQueue reads and prints them (humantime style, plus `[[D-]HH:]MM:SS`).

Parsing works in integer nanoseconds so that `parse_duration(format_duration(x))` gives back
exactly the same float for whole milliseconds; summing float parts would drift by an ulp.
"""

from __future__ import annotations

import math
import re

_NS_PER_S = 1_000_000_000

# humantime's unit names (case-sensitive: `M` is months, `m` minutes).
_UNIT_NS: dict[str, int] = {}
for _names, _ns in (
    (("nanos", "nsec", "nsecs", "ns"), 1),
    (("usec", "usecs", "us", "µs"), 1_000),
    (("millis", "msec", "msecs", "ms"), 1_000_000),
    (("seconds", "second", "secs", "sec", "s"), _NS_PER_S),
    (("minutes", "minute", "mins", "min", "m"), 60 * _NS_PER_S),
    (("hours", "hour", "hrs", "hr", "h"), 3_600 * _NS_PER_S),
    (("days", "day", "d"), 86_400 * _NS_PER_S),
    (("weeks", "week", "w"), 7 * 86_400 * _NS_PER_S),
    (("months", "month", "M"), 2_630_016 * _NS_PER_S),
    (("years", "year", "y"), 31_557_600 * _NS_PER_S),
):
    for _name in _names:
        _UNIT_NS[_name] = _ns

_NUMBER = r"[0-9]+(?:\.[0-9]+)?"
_PLAIN_RE = re.compile(rf"{_NUMBER}")
_TOKEN_RE = re.compile(rf"({_NUMBER})\s*([a-zA-Zµ]+)")
_HUMANTIME_RE = re.compile(rf"(?:{_NUMBER}\s*[a-zA-Zµ]+\s*)+")
_CLOCK_RE = re.compile(r"(?:(?:([0-9]+)-)?([0-9]+):)?([0-9]+):([0-9]+(?:\.[0-9]+)?)")


def _unit_needed(text: str) -> ValueError:
    """A bare number: Slurm reads `90` as minutes, hqpy would read seconds, so neither guesses."""
    number = text.strip()
    shown = number if len(number) <= 20 else number[:20] + "..."
    return ValueError(
        f"invalid duration {shown!r}: time unit needed, for example {shown}m, 1h 30m or 01:30:00"
        f" ({shown}s for seconds)"
    )


def _error(text: str) -> ValueError:
    return ValueError(f"invalid duration {text!r}: expected e.g. 30s, 1h 30m, 500ms or HH:MM:SS")


MAX_SECONDS = 2**64 - 1
"""The longest duration (HyperQueue's durations hold `u64` seconds)."""
_MAX_NS = MAX_SECONDS * _NS_PER_S
_MAX_DIGITS = 40


def _too_large(text: str) -> ValueError:
    shown = text.strip() if len(text.strip()) <= 60 else text.strip()[:60] + "..."
    return ValueError(
        f"invalid duration {shown!r}: it is too large (at most {MAX_SECONDS} seconds)"
    )


def _to_ns(number: str, unit_ns: int) -> int:
    from decimal import Decimal, InvalidOperation  # here: decimal costs every `hq` start 2 ms

    if len(number) > _MAX_DIGITS:
        raise OverflowError
    try:
        return int((Decimal(number) * unit_ns).to_integral_value())
    except InvalidOperation as e:  # pragma: no cover - the regexes only let digits through
        raise ValueError(f"invalid number {number!r}") from e


def parse_duration(text: str) -> float:
    """Seconds from `500ms`, `1h 30m`, `1h30m` or `[[D-]HH:]MM:SS`.

    A bare number other than `0` is refused, as HyperQueue (humantime) does: it needs a unit.
    Durations past `MAX_SECONDS` are refused (before any float could overflow)."""
    try:
        total = _parse_ns(text)
    except OverflowError:
        raise _too_large(text) from None
    if total > _MAX_NS:
        raise _too_large(text)
    return total / _NS_PER_S


def _parse_ns(text: str) -> int:
    stripped = text.strip()
    if _PLAIN_RE.fullmatch(stripped):
        if set(stripped) <= {"0", "."}:
            return 0
        raise _unit_needed(text)
    clock = _CLOCK_RE.fullmatch(stripped)
    if clock:
        days, hours, minutes, seconds = clock.groups()
        if any(len(part or "") > _MAX_DIGITS for part in clock.groups()):
            raise OverflowError
        if int(minutes) >= 60 and hours is not None or int(seconds.partition(".")[0]) >= 60:
            raise _error(text)
        total = _to_ns(seconds, _NS_PER_S)
        total += int(minutes) * 60 * _NS_PER_S
        total += int(hours or 0) * 3_600 * _NS_PER_S
        total += int(days or 0) * 86_400 * _NS_PER_S
        return total
    if not _HUMANTIME_RE.fullmatch(stripped):
        raise _error(text)
    total = 0
    for number, unit in _TOKEN_RE.findall(stripped):
        unit_ns = _UNIT_NS.get(unit)
        if unit_ns is None:
            raise _error(text)
        total += _to_ns(number, unit_ns)
    return total


def _check_finite(seconds: float) -> None:
    if not math.isfinite(seconds):
        raise ValueError(f"cannot format duration {seconds!r}: expected a finite number")


def _format_ms(total_ms: int) -> str:
    if total_ms <= 0:
        return "0s"
    hours, rest = divmod(total_ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1_000)
    parts = [f"{v}{u}" for v, u in ((hours, "h"), (minutes, "m"), (secs, "s"), (millis, "ms")) if v]
    return " ".join(parts)


def format_duration(seconds: float) -> str:
    """`1h 10m 15s` style; negative values (clock skew between hosts) print as `0s`."""
    _check_finite(seconds)
    return _format_ms(round(seconds * 1000))


def format_makespan(seconds: float) -> str:
    """Like `format_duration`, truncated to a precision that fits the magnitude, as HQ does."""
    _check_finite(seconds)
    # Round to whole microseconds first so that 1.012 (1011.999... ms in binary) stays 1s 12ms.
    micros = round(seconds * 1_000_000)
    if micros < 60_000_000:
        ms = micros // 1_000
    elif micros < 3_600_000_000:
        ms = micros // 1_000_000 * 1_000
    else:
        ms = micros // 60_000_000 * 60_000
    return _format_ms(ms)


def format_hms(seconds: float) -> str:
    """`HH:MM:SS` for batch-system walltimes; hours are never folded into days (`96:00:00`)."""
    _check_finite(seconds)
    total = max(0, math.floor(seconds + 1e-9))
    hours, rest = divmod(total, 3_600)
    minutes, secs = divmod(rest, 60)
    return f"{hours:02}:{minutes:02}:{secs:02}"
