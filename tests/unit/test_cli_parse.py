"""`hq` argument parsing: the noun that decides which parser is built, and the words after `--`
(argparse places them: the program of `hq submit`, the batch arguments of `hq alloc add`)."""

from __future__ import annotations

import pytest

from hqpy.cli.main import build_parser, find_noun, parse


@pytest.mark.parametrize(
    ("argv", "noun"),
    [
        (["job", "list"], "job"),
        (["--server-dir", "d", "--debug", "submit", "--", "x"], "submit"),
        (["--server-dir=d", "--output-mode", "json", "alloc", "list"], "alloc"),
        (["--colors", "never", "worker", "list"], "worker"),
        (["--version"], None),
        (["--help"], None),
        (["--serv", "d", "job", "list"], None),
        ([], None),
    ],
)
def test_find_noun_skips_global_flags_and_their_values(argv: list[str], noun: str | None) -> None:
    assert find_noun(argv) == noun


def test_option_values_that_look_like_nouns_do_not_split_submit() -> None:
    args = parse(["submit", "--name", "add", "--cwd", "alloc", "--", "echo", "--", "x"])
    assert args.name == "add" and args.cwd == "alloc"
    assert args.command == ["--", "echo", "--", "x"]


@pytest.mark.parametrize(
    ("argv", "batch"),
    [
        (
            ["alloc", "add", "slurm", "-t", "1h", "--", "--partition=p1", "x", "--", "y"],
            ["--partition=p1", "x", "--", "y"],
        ),
        (["alloc", "add", "slurm", "-t", "1h", "--", "-t", "5"], ["-t", "5"]),
        (["alloc", "dry-run", "pbs", "--time-limit=1h", "--", "-q", "q1"], ["-q", "q1"]),
        (["alloc", "add", "local", "-t", "1h"], []),
    ],
)
def test_alloc_add_takes_the_words_after_double_dash_verbatim(
    argv: list[str], batch: list[str]
) -> None:
    args = parse(argv)
    assert args.additional_args == batch
    assert args.time_limit == 3600.0


def test_unknown_words_are_still_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse(["alloc", "add", "local", "-t", "1h", "--bogus", "--", "x"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        parse(["job", "list", "--", "x"])
    assert exit_info.value.code == 2


def test_the_branch_of_one_noun_parses_as_the_whole_tree() -> None:
    argv = ["--server-dir", "d", "job", "cancel", "1-3", "--reason", "r"]
    whole = vars(build_parser().parse_args(argv))
    branch = vars(build_parser("job").parse_args(argv))
    whole.pop("func")
    branch.pop("func")
    assert whole == branch


def test_a_pool_size_the_server_refuses_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`hq pool set p 3000000000` passed the CLI (32-bit counts) and failed on the server (exit
    1); the CLI now checks the server's range."""
    from hqpy.server.pools import MAX_POOL_SIZE

    assert parse(["pool", "set", "p", str(MAX_POOL_SIZE)]).size == MAX_POOL_SIZE
    with pytest.raises(SystemExit) as exit_info:
        parse(["pool", "set", "p", str(MAX_POOL_SIZE + 1)])
    assert exit_info.value.code == 2
    assert f"at most {MAX_POOL_SIZE}" in capsys.readouterr().err
