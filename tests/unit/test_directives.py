"""`#HQ` directives and shebangs of submitted scripts (issue 14.7)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from hqpy.cli.directives import apply_directives, read_directives
from hqpy.cli.jobs import add_submit_options

SCRIPT = """#!/bin/bash -l
# a comment
#HQ --name from-directive --priority 3
#HQ --env A=1 --cpus 2

#HQ --time-limit 1m
echo hi
#HQ --name too-late
"""


def submit_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_submit_options(parser)
    return parser.parse_args(list(argv))


def no_stdin() -> bytes:
    raise AssertionError("stdin read")


def test_directives_are_read_until_the_first_line_that_is_not_a_comment() -> None:
    words, shebang = read_directives(SCRIPT)
    # Blank lines and comments do not end the top of the script; `echo hi` does.
    assert words == [
        *("--name", "from-directive", "--priority", "3"),
        *("--env", "A=1", "--cpus", "2"),
        *("--time-limit", "1m"),
    ]
    assert shebang == ["/bin/bash", "-l"]


def test_a_script_without_shebang_keeps_its_command(tmp_path: Path) -> None:
    script = tmp_path / "job.sh"
    script.write_text("#HQ --name x\necho\n")
    args = submit_args(str(script), "a")
    apply_directives(args, add_submit_options, no_stdin)
    assert (args.name, args.command) == ("x", [str(script), "a"])


def test_the_command_line_wins_and_repeatable_options_add_up(tmp_path: Path) -> None:
    script = tmp_path / "job.sh"
    script.write_text(SCRIPT)
    args = submit_args("--name", "cli", "--env", "B=2", "--", str(script), "arg")
    apply_directives(args, add_submit_options, no_stdin)
    assert args.name == "cli"
    assert args.priority == 3
    assert args.env == [("A", "1"), ("B", "2")]
    assert args.time_limit == 60.0
    assert args.command == ["/bin/bash", "-l", str(script), "arg"]


@pytest.mark.parametrize(
    ("mode", "program", "applied"),
    [
        ("auto", "job.sh", True),
        ("auto", "job.py", False),
        ("file", "job.py", True),
        ("off", "job.sh", False),
    ],
)
def test_modes(tmp_path: Path, mode: str, program: str, applied: bool) -> None:
    script = tmp_path / program
    script.write_text(SCRIPT)
    args = submit_args("--directives", mode, str(script))
    apply_directives(args, add_submit_options, no_stdin)
    assert (args.name == "from-directive") is applied


def test_directives_from_stdin_leave_the_command_alone() -> None:
    args = submit_args("--directives", "stdin", "--", "prog")
    apply_directives(args, add_submit_options, SCRIPT.encode)
    assert (args.name, args.command) == ("from-directive", ["--", "prog"])


def test_a_bad_directive_is_one_clear_error(tmp_path: Path) -> None:
    script = tmp_path / "job.sh"
    script.write_text("#HQ --priority high\n")
    args = submit_args(str(script))
    with pytest.raises(ValueError, match=r"invalid directives in `.*job.sh`: .*priority"):
        apply_directives(args, add_submit_options, no_stdin)
