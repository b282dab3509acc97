"""`#HQ` directives and the shebang of a submitted script, read as HyperQueue reads them.

`hq submit job.sh` (with `--directives auto`, the default, for a program ending in `.sh`) reads
the top of the script: `#HQ <options>` lines, up to the first line that is neither a comment nor
blank and within the first 32 KiB, become `hq submit` options (the command line wins for
single-value options; `--env` and `--resource` add up). A first-line shebang `#!interp args`
runs the script as `interp args job.sh ...`, so a script without the execute bit runs too.
"""

from __future__ import annotations

import argparse
import os
import shlex
from collections.abc import Callable
from typing import NoReturn

MAX_DIRECTIVE_BYTES = 32 * 1024
MODES = ("auto", "file", "stdin", "off")
NOT_DIRECTIVES = ("command", "func", "directives")


def read_directives(text: str) -> tuple[list[str], list[str] | None]:
    """The option words of the `#HQ` lines at the top of a script, and its shebang's argv."""
    shebang: list[str] | None = None
    words: list[str] = []
    for n, line in enumerate(text.splitlines()):
        if n == 0 and line.startswith("#!"):
            shebang = line[2:].split() or None
            continue
        stripped = line.strip()
        if not stripped:
            continue
        if not stripped.startswith("#"):
            break
        if stripped == "#HQ" or stripped.startswith(("#HQ ", "#HQ\t")):
            try:
                words += shlex.split(stripped[3:])
            except ValueError as e:
                raise ValueError(f"invalid directive `{stripped}`: {e}") from None
    return words, shebang


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ValueError(message)


def apply_directives(
    args: argparse.Namespace,
    add_options: Callable[[argparse.ArgumentParser], None],
    read_stdin: Callable[[], bytes],
) -> None:
    """Merge the directives of the submitted script into `args` (command line first)."""
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    mode = args.directives
    if mode == "off" or not command or (mode == "auto" and not command[0].endswith(".sh")):
        return
    source = "stdin" if mode == "stdin" else f"`{command[0]}`"
    if mode == "stdin":
        data = read_stdin()[:MAX_DIRECTIVE_BYTES]
    else:
        try:
            with open(command[0], "rb") as f:
                data = f.read(MAX_DIRECTIVE_BYTES)
        except OSError as e:
            raise ValueError(f"cannot read directives from {source}: {e.strerror or e}") from None
    words, shebang = read_directives(data.decode(errors="replace"))
    if words:
        parser = _Parser(prog="#HQ", add_help=False)
        add_options(parser)
        try:
            found = parser.parse_args(words)
        except ValueError as e:
            raise ValueError(f"invalid directives in {source}: {e}") from None
        if found.command:
            raise ValueError(
                f"invalid directives in {source}: unexpected {' '.join(found.command)!r}"
            )
        for key, value in vars(found).items():
            if key in NOT_DIRECTIVES:
                continue
            default = parser.get_default(key)
            given = getattr(args, key, default)
            if isinstance(default, list):
                setattr(args, key, [*value, *given])
            elif given == default:
                setattr(args, key, value)
    if shebang is not None and mode != "stdin":
        if args.name is None and getattr(args, "job", None) is None:
            # The job keeps the script's name, not its interpreter's.
            args.name = os.path.basename(command[0])
        args.command = [*shebang, *command]
