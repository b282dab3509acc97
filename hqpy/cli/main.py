"""`hq`: argument parsing and dispatch.

Global flags (`--server-dir`, `--output-mode`, `--colors`, `--debug`) are accepted anywhere in
argv, as HyperQueue accepts them: every sub-parser gets them with `SUPPRESS` defaults, so a
flag given at any level wins over the top-level default.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from hqpy import __version__

EXIT_INTERRUPTED = 130


class Parser(argparse.ArgumentParser):
    """argparse with clap-like errors: `error: <text>` and exit code 2."""

    def error(self, message: str) -> NoReturn:
        prefix = "the following arguments are required: "
        if message.startswith(prefix):
            # Name missing options as clap does (`--time-limit <TIME_LIMIT>`): scripts match it.
            missing = [self._clap_name(name) for name in message[len(prefix) :].split(", ")]
            message = "the following required arguments were not provided:\n  " + "\n  ".join(
                missing
            )
        self.print_usage(sys.stderr)
        self.exit(2, f"error: {message}\n")

    def _clap_name(self, shown: str) -> str:
        for action in self._actions:
            if action.option_strings and "/".join(action.option_strings) == shown:
                longest = max(action.option_strings, key=len)
                return f"{longest} <{action.dest.upper()}>"
        return f"<{shown.upper()}>" if not shown.startswith("-") else shown


def _global_options(defaults: bool) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    d: Callable[[Any], Any] = (lambda v: v) if defaults else (lambda v: argparse.SUPPRESS)
    p.add_argument(
        "--server-dir",
        type=Path,
        default=d(None),
        help="Path to the server directory [env: HQ_SERVER_DIR, default: ~/.hq-server]",
    )
    p.add_argument(
        "--output-mode",
        choices=("cli", "json", "quiet"),
        default=d(None),
        help="How to print results [env: HQ_OUTPUT_MODE, default: cli]",
    )
    p.add_argument(
        "--colors", choices=("auto", "always", "never"), default=d("auto"), help="Use colors"
    )
    p.add_argument("--debug", action="store_true", default=d(False), help="Debug logging")
    return p


class CommandTree:
    """Builds nested sub-parsers that all accept the global flags."""

    def __init__(self) -> None:
        self.common = _global_options(defaults=False)
        self.root = Parser(
            prog="hq",
            description="hqpy: a HyperQueue-compatible task server with automatic allocation",
            parents=[_global_options(defaults=True)],
        )
        self.root.add_argument("--version", action="version", version=f"hq {__version__}")

    def group(self, parser: argparse.ArgumentParser, dest: str) -> Any:
        return parser.add_subparsers(dest=dest, required=True, parser_class=Parser)

    def command(self, subparsers: Any, name: str, help: str, **kw: Any) -> argparse.ArgumentParser:
        return subparsers.add_parser(name, help=help, description=help, parents=[self.common], **kw)  # type: ignore[no-any-return]


def build_parser() -> argparse.ArgumentParser:
    from hqpy.cli import alloc, jobs, server, workers

    tree = CommandTree()
    nouns = tree.group(tree.root, "noun")
    server.register(tree, nouns)
    workers.register(tree, nouns)
    jobs.register(tree, nouns)
    alloc.register(tree, nouns)
    return tree.root


def _env_output_mode(args: argparse.Namespace) -> str:
    mode = args.output_mode or os.environ.get("HQ_OUTPUT_MODE") or "cli"
    if mode not in ("cli", "json", "quiet"):
        print(
            f"error: invalid HQ_OUTPUT_MODE `{mode}`; expected cli, json or quiet", file=sys.stderr
        )
        sys.exit(2)
    return mode


def main(argv: Sequence[str] | None = None) -> NoReturn:
    argv = list(sys.argv[1:] if argv is None else argv)
    argv, batch_args = split_batch_args(argv)
    args = build_parser().parse_args(argv)
    if batch_args is not None:
        args.additional_args = batch_args
    args.output_mode = _env_output_mode(args)
    if args.server_dir is None:
        from hqpy.common.serverdir import default_server_dir

        args.server_dir = default_server_dir()
    args.server_dir = Path(os.path.abspath(args.server_dir))
    args.debug = args.debug or os.environ.get("HQ_DEBUG", "") not in ("", "0", "false")

    from hqpy.common.logs import setup_logging

    setup_logging(args.debug)
    if not getattr(args, "long_running", False):
        # `hq job list | head` should end quietly.
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    try:
        code = args.func(args)
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    sys.stdout.flush()
    sys.exit(code)


def split_batch_args(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """`hq alloc add slurm ... -- --partition=p1`: the words after `--` belong to the batch
    system, verbatim; argparse alone cannot give a positional both sides of `--`."""
    if "--" not in argv:
        return argv, None
    cut = argv.index("--")
    head = argv[:cut]
    if "alloc" in head and ("add" in head or "dry-run" in head):
        return head, argv[cut + 1 :]
    return argv, None
