"""`hq`: argument parsing and dispatch.

Global flags (`--server-dir`, `--output-mode`, `--colors`, `--debug`) are accepted anywhere in
argv, as HyperQueue accepts them: every sub-parser gets them with `SUPPRESS` defaults, so a
flag given at any level wins over the top-level default.

Start-up time is part of the interface (scripts call `hq` in loops): only the parser of the noun
that argv names is built and only its module imported; `hq --version` imports nothing else.
"""

from __future__ import annotations

import gc
import sys

from hqpy import __version__

TYPE_CHECKING = False
if TYPE_CHECKING:  # `typing` itself costs a few ms of `hq --version`'s start-up
    import argparse
    from collections.abc import Callable, Iterator, Sequence
    from typing import Any, NoReturn, TypeAlias

    Subparsers: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]

EXIT_INTERRUPTED = 130
EXIT_USAGE = 2

NOUN_MODULES = {
    "server": "server",
    "worker": "workers",
    "submit": "jobs",
    "job": "jobs",
    "task": "jobs",
    "alloc": "alloc",
    "journal": "journal",
    "pool": "pool",
}
"""Which module of `hqpy.cli` registers each noun (all of them for `hq --help`)."""

GLOBAL_VALUE_FLAGS = ("--server-dir", "--output-mode", "--colors")


def _parser_class() -> type[argparse.ArgumentParser]:
    import argparse

    class Parser(argparse.ArgumentParser):
        """argparse with clap-like errors: `error: <text>` and exit code 2."""

        def __init__(self, *args: Any, unreached: bool = False, **kwargs: Any) -> None:
            if unreached:
                # A command argv does not name (see `CommandTree`): only its name and help
                # line are shown, so its parser is never used; setting one up costs ~0.5 ms.
                return
            super().__init__(*args, **kwargs)

        def error(self, message: str) -> NoReturn:
            prefix = "the following arguments are required: "
            if message.startswith(prefix):
                # Name missing options as clap does (`--time-limit <TIME_LIMIT>`).
                missing = [self._clap_name(name) for name in message[len(prefix) :].split(", ")]
                message = "the following required arguments were not provided:\n  " + (
                    "\n  ".join(missing)
                )
            self.print_usage(sys.stderr)
            self.exit(EXIT_USAGE, f"error: {message}\n")

        def _get_formatter(self) -> argparse.HelpFormatter:
            # argparse's own asks `shutil` for the terminal width, importing it (and bz2, lzma,
            # fnmatch) for the hundreds of formatters that building parsers makes.
            width = _terminal_columns() - 2  # as argparse sets it
            return self.formatter_class(prog=self.prog, width=width)  # type: ignore[call-arg]

        def _clap_name(self, shown: str) -> str:
            for action in self._actions:
                if action.option_strings and "/".join(action.option_strings) == shown:
                    longest = max(action.option_strings, key=len)
                    return f"{longest} <{action.dest.upper()}>"
            return f"<{shown.upper()}>" if not shown.startswith("-") else shown

    return Parser


def _terminal_columns() -> int:
    """`shutil.get_terminal_size().columns`, without importing shutil."""
    import os

    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns > 0:
        return columns
    try:
        columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):  # no stdout (None), not a terminal
        columns = 0
    return columns or 80


def _global_options(
    defaults: bool, parser_class: type[argparse.ArgumentParser]
) -> argparse.ArgumentParser:
    import argparse
    from pathlib import Path

    p = parser_class(add_help=False)
    d: Callable[[object], object] = (lambda v: v) if defaults else (lambda v: argparse.SUPPRESS)
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
    """Builds nested sub-parsers that all accept the global flags.

    Only the branch that argv names is built: a sub-command off that path is registered by name
    and help (so choices, usage lines and `invalid choice` errors read as before) and its
    module's `add_argument` calls go to an `_Unbuilt` stand-in, since argparse never parses with
    it. `hq job list` thus builds the options of `job list`, not those of twenty commands."""

    def __init__(self, words: Sequence[str] = ()) -> None:
        self.words = tuple(words)
        """The command's words in argv (`job`, `list`, ...); none: build everything."""
        self.parser_class = _parser_class()
        self.common = _global_options(False, self.parser_class)
        self.root = self.parser_class(
            prog="hq",
            description="hqpy: a HyperQueue-compatible task server with automatic allocation",
            parents=[_global_options(True, self.parser_class)],
        )
        self.root.add_argument("--version", action="version", version=f"hq {__version__}")
        self._paths: dict[object, tuple[str, ...]] = {self.root: ()}

    def group(self, parser: argparse.ArgumentParser, dest: str) -> Subparsers:
        if _unbuilt(parser):
            return parser  # type: ignore[return-value]
        group = parser.add_subparsers(dest=dest, required=True, parser_class=self.parser_class)
        self._paths[group] = self._paths[parser]
        return group

    def command(self, subparsers: Subparsers, name: str, help: str) -> argparse.ArgumentParser:
        if _unbuilt(subparsers):
            return subparsers  # type: ignore[return-value]
        path = (*self._paths[subparsers], name)
        if not self._reached(path):
            subparsers.add_parser(name, help=help, unreached=True)
            return _Unbuilt()  # type: ignore[return-value]
        parser = subparsers.add_parser(name, help=help, description=help, parents=[self.common])
        self._paths[parser] = path
        return parser

    def _reached(self, path: tuple[str, ...]) -> bool:
        """Whether argv may run `path` (a word argv does not give may be anything)."""
        return all(want == word for want, word in zip(path, self.words, strict=False))


class _Unbuilt:
    """A parser that argv does not reach: what a module adds to it is dropped."""

    def __getattr__(self, name: str) -> Callable[..., _Unbuilt]:
        return self._drop

    def __setattr__(self, name: str, value: object) -> None:
        pass

    def _drop(self, *args: object, **kwargs: object) -> _Unbuilt:
        return self


def _unbuilt(parser: object) -> bool:
    return isinstance(parser, _Unbuilt)


def build_parser(branch: str | Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The whole command tree, or the branch of a noun (`job`) or of argv's command words
    (`job`, `list`): what one call needs."""
    import importlib

    words = (branch,) if isinstance(branch, str) else tuple(branch or ())
    noun = words[0] if words else None
    tree = CommandTree(words)
    nouns = tree.group(tree.root, "noun")
    modules = (
        [NOUN_MODULES[noun]] if noun in NOUN_MODULES else list(dict.fromkeys(NOUN_MODULES.values()))
    )
    for name in modules:
        importlib.import_module(f"hqpy.cli.{name}").register(tree, nouns)
    return tree.root


def command_words(argv: Sequence[str]) -> list[str]:
    """The words of argv before its first option other than a global flag (`job`, `info`,
    `1`): they name the command to build."""
    return [argv[i] for i in _word_indices(argv)]


def find_noun(argv: Sequence[str]) -> str | None:
    """The first word that is not a global flag or its value; None when a root-level option
    (`--help`, `--version`, an abbreviation) comes first and the whole tree must decide."""
    at = _noun_index(argv)
    return None if at is None else argv[at]


def _noun_index(argv: Sequence[str]) -> int | None:
    return next(_word_indices(argv), None)


def _word_indices(argv: Sequence[str]) -> Iterator[int]:
    """Where argv's words are, skipping global flags and their values, up to its first other
    option."""
    i = 0
    while i < len(argv):
        word = argv[i]
        if word in GLOBAL_VALUE_FLAGS:
            i += 2
        elif word == "--debug" or word.startswith(tuple(f"{f}=" for f in GLOBAL_VALUE_FLAGS)):
            i += 1
        elif word.startswith("-"):
            return
        else:
            yield i
            i += 1


def _starts(argv: Sequence[str]) -> str | None:
    """`server` for `hq server start ...`, `worker` for `hq worker start ...`: their stop
    signals must be caught from the first instruction on."""
    at = _noun_index(argv)
    if at is None or argv[at] not in ("server", "worker"):
        return None
    verbs = [w for w in argv[at + 1 :] if not w.startswith("-")]
    return argv[at] if verbs[:1] == ["start"] else None


def _env_output_mode(args: argparse.Namespace) -> str:
    import os

    mode = args.output_mode or os.environ.get("HQ_OUTPUT_MODE") or "cli"
    if mode not in ("cli", "json", "quiet"):
        print(
            f"error: invalid HQ_OUTPUT_MODE `{mode}`; expected cli, json or quiet", file=sys.stderr
        )
        sys.exit(EXIT_USAGE)
    return mode


def parse(argv: list[str]) -> argparse.Namespace:
    """argv to options; exits 2 with a clap-like message on a usage error.

    Words after `--` are argparse's to place: `hq submit` keeps them as the command (a
    REMAINDER positional) and `hq alloc add` receives them as the batch system's arguments
    (`batch_args` commands): what argparse leaves over must be exactly that tail.
    """
    noun = find_noun(argv)
    if noun is None and argv[:1] == ["--version"]:
        print(f"hq {__version__}")
        sys.exit(0)
    _refuse_undecodable(argv)
    parser = build_parser(command_words(argv) if noun is not None else None)
    args, extras = parser.parse_known_args(argv)
    if extras:
        tail = argv[argv.index("--") + 1 :] if "--" in argv else None
        if getattr(args, "batch_args", False) and tail is not None and extras[-len(tail) :] == tail:
            if extras[: -len(tail)] not in ([], ["--"]):
                parser.error(f"unrecognized arguments: {' '.join(extras[: -len(tail)])}")
            args.additional_args = tail
        else:
            parser.error(f"unrecognized arguments: {' '.join(extras)}")
    return args


def _refuse_undecodable(argv: Sequence[str]) -> None:
    """Bytes that are not UTF-8 (argv arrives surrogate-escaped) cannot cross the JSON wire:
    refuse them naming the option, rather than failing later in an encoder."""
    for i, word in enumerate(argv):
        try:
            word.encode()
        except UnicodeEncodeError:
            if word.startswith("--") and "=" in word:
                where = f"the value of {word.split('=', 1)[0]}"
            elif i > 0 and argv[i - 1].startswith("-") and argv[i - 1] != "--":
                where = f"the value of {argv[i - 1]}"
            else:
                where = "argument"
            print(
                f"error: {where} is not valid UTF-8: {ascii(word)}; hq passes text only",
                file=sys.stderr,
            )
            sys.exit(EXIT_USAGE)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """`hq`; without `argv`, as the program itself (see `_end_process`)."""
    program = argv is None
    if program:
        # Start-up (imports, parsers) makes many objects and no garbage cycles: collecting
        # them as they pile up costs a call a few ms. Collection resumes when the command runs,
        # with what start-up made frozen out of it.
        gc.disable()
    argv = list(sys.argv[1:] if argv is None else argv)
    starts = _starts(argv)
    if starts == "server":
        from hqpy.cli import early_signals

        early_signals.install()
    elif starts == "worker":
        import signal

        # Both stop, whatever was inherited: a shell starts `hq worker start &` with SIGINT
        # ignored, and until trio watches the signals (`worker.startup`) they raise here.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        args = parse(argv)
    except KeyboardInterrupt:
        sys.exit(0 if starts == "worker" else EXIT_INTERRUPTED)
    import os
    import signal
    from pathlib import Path

    args.output_mode = _env_output_mode(args)
    if args.server_dir is None:
        from hqpy.common.serverdir import default_server_dir

        args.server_dir = default_server_dir()
    args.server_dir = Path(os.path.abspath(args.server_dir))
    args.debug = args.debug or os.environ.get("HQ_DEBUG", "") not in ("", "0", "false")

    from hqpy.common import logs

    if "logging" in sys.modules or getattr(args, "long_running", False):
        logs.setup_logging(args.debug)  # the command's modules log through `logging` itself
    else:
        logs.setup_logging_on_first_use(args.debug)
    if not getattr(args, "long_running", False):
        # `hq job list | head` should end quietly.
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    if program:
        gc.freeze()
        gc.enable()
    try:
        code = args.func(args)
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    except Exception as e:  # the last guard of a client: one line, never a traceback
        if args.debug or getattr(args, "long_running", False):
            raise  # a server's or worker's crash keeps its traceback for the log
        from hqpy.cli.common import output_of

        output_of(args).error(f"{type(e).__name__}: {e} (run with --debug for details)")
        code = 1
    sys.stdout.flush()
    if program and not getattr(args, "long_running", False):
        _end_process(code)
    sys.exit(code)


def _end_process(code: int | None) -> NoReturn:
    """End a client command's process without the interpreter's teardown, which frees every
    module and object one by one (several ms of each short `hq` call). What of the teardown
    matters is done first: the atexit callbacks (logging's flush), the standard streams."""
    import atexit
    import os

    if "threading" in sys.modules and sys.modules["threading"].active_count() > 1:
        sys.exit(code)  # a thread still runs: let the interpreter join it as usual
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)
