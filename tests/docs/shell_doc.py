"""Run a Markdown page's shell sessions as a reader would, and compare what they print.

A page is a list of steps, in order:
- a ```bash block whose second line is `# NAME` is a script the reader saves as NAME;
- a ```console block holds commands (`$ cmd`, continued by lines ending in `\\`) each followed
  by its output as shown;
- `<!-- doc: DIRECTIVE -->` just before a block changes how the next block's output is compared
  (`loose-digits`: digits are not compared; `unordered`: lines in any order; `skip-output`: the
  output is not compared; `not-run`: the block is shown only, e.g. installation steps).

In shown output, a line `...` stands for any number of lines. Commands that stay in the
foreground (`hq server start`, `hq worker start`) or end in `&` run in the background, as in
another terminal; their output is compared once it has appeared. What differs from run to run
(times, dates, durations, ports, pids, uids, host names, temporary paths) is normalised on both
sides first, and runs of spaces and of `-` are folded, so table widths do not matter.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import attrs

FENCE = re.compile(r"^```(\w*)\s*$")
DIRECTIVE = re.compile(r"^<!--\s*doc:\s*([\w\- ]+?)\s*-->\s*$")
DAEMONS = re.compile(r"^hq (server start|worker start)\b")


@attrs.frozen
class Script:
    name: str
    text: str


@attrs.frozen
class Command:
    line: int
    """Line of the page where the command starts (1-based), for messages."""
    command: str
    shown: tuple[str, ...]
    directives: frozenset[str] = frozenset()

    @property
    def background(self) -> bool:
        return self.command.rstrip().endswith("&") or bool(DAEMONS.match(self.command))


Step = Script | Command


def parse_page(text: str) -> list[Step]:
    steps: list[Step] = []
    lines = text.splitlines()
    i = 0
    directives: set[str] = set()
    while i < len(lines):
        match = DIRECTIVE.match(lines[i])
        if match:
            directives.update(match.group(1).split())
            i += 1
            continue
        fence = FENCE.match(lines[i])
        if not fence or not fence.group(1):
            i += 1
            continue
        kind = fence.group(1)
        start = i + 1
        end = start
        while end < len(lines) and not FENCE.match(lines[end]):
            end += 1
        body = lines[start:end]
        if kind == "bash" and len(body) > 1 and re.fullmatch(r"# [\w.\-]+", body[1]):
            steps.append(Script(body[1][2:], "\n".join(body) + "\n"))
        elif kind == "console":
            steps.extend(_commands(body, start + 1, frozenset(directives)))
        directives = set()
        i = end + 1
    return steps


def _commands(body: list[str], first_line: int, directives: frozenset[str]) -> Iterable[Command]:
    i = 0
    while i < len(body):
        if not body[i].startswith("$ "):
            raise ValueError(f"line {first_line + i}: output before any command: {body[i]!r}")
        line = first_line + i
        parts = [body[i][2:]]
        while parts[-1].endswith("\\") and i + 1 < len(body):
            i += 1
            parts.append(body[i])
        i += 1
        shown = []
        while i < len(body) and not body[i].startswith("$ "):
            shown.append(body[i])
            i += 1
        yield Command(line, "\n".join(parts), tuple(shown), directives)


# ---------------------------------------------------------------------------------------------
# Comparing


@attrs.frozen
class Normaliser:
    replacements: tuple[tuple[str, str], ...] = ()
    """Literal text of this run (its temporary root, its host name) and what the page shows."""

    def __call__(self, line: str, directives: frozenset[str] = frozenset()) -> str:
        for actual, shown in self.replacements:
            line = line.replace(actual, shown)
        for pattern, repl in _PATTERNS:
            line = pattern.sub(repl, line)
        if "loose-digits" in directives:
            line = re.sub(r"\d+", "N", line)
        line = re.sub(r"-{2,}", "-", line)
        return re.sub(r"[ \t]+", " ", line).strip()


_PATTERNS = [
    (re.compile(p), r)
    for p, r in (
        (r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", "<time>"),
        (r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", "<date>"),
        (r"\d\d\.\d\d\.\d{4} \d\d:\d\d:\d\d", "<date>"),
        (r"\b(\d+h )?(\d+m )?(\d+s )?\d+ms\b|\b\d+s\b", "<duration>"),
        (r"/tmp/hq-worker\w+/work/t[\w\-]+", "<task dir>"),
        (r"\bHQ=\S+", "HQ=<hq>"),
        (r"\b(Client|Worker) port( *\| *)\d+", r"\1 port\2<port>"),
        (r"\bPid( *\| *)\d+", r"Pid\1<pid>"),
        (r"\bServer UID( *\| *)\w{6}\b", r"Server UID\1<uid>"),
        (r"\bserver \w{6}\b", "server <uid>"),
        (r"\bServer \w{6} started", "Server <uid> started"),
        (r"\bmem \d+", "mem <mib>"),
    )
]


def matches(shown: Iterable[str], actual: Iterable[str]) -> bool:
    """Does `actual` match `shown`, where a shown `...` line stands for any lines?"""
    want = list(shown)
    have = list(actual)
    # positions in `have` reachable after each prefix of `want`
    reach = {0}
    for pattern in want:
        if pattern == "...":
            reach = set(range(min(reach), len(have) + 1)) if reach else set()
        else:
            reach = {i + 1 for i in reach if i < len(have) and have[i] == pattern}
        if not reach:
            return False
    return len(have) in reach


def compare(
    command: Command, output: str, normalise: Normaliser
) -> tuple[bool, list[str], list[str]]:
    """(matches, shown lines, actual lines), both normalised and without blank lines."""
    d = command.directives
    shown = [normalise(s, d) for s in command.shown if s.strip()]
    actual = [normalise(s, d) for s in output.splitlines() if s.strip()]
    if "skip-output" in d:
        return True, shown, actual
    if "unordered" in d and "..." not in shown:
        return sorted(shown) == sorted(actual), shown, actual
    return matches(shown, actual), shown, actual
