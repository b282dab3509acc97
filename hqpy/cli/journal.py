"""`hq journal export|compact FILE`: read or shrink a server journal (`server start --journal`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from hqpy.cli.common import output_of

if TYPE_CHECKING:
    from hqpy.cli.main import CommandTree, Subparsers


def register(tree: CommandTree, nouns: Subparsers) -> None:
    journal = tree.command(nouns, "journal", "Commands for the server's journal file")
    verbs = tree.group(journal, "verb")

    p = tree.command(verbs, "export", "Print the records of a journal as JSON lines")
    p.add_argument("file", type=Path, help="The journal file")
    p.set_defaults(func=cmd_export)

    p = tree.command(
        verbs,
        "compact",
        "Rewrite a journal without what finished jobs no longer need (stop the server first)",
    )
    p.add_argument("file", type=Path, help="The journal file")
    p.set_defaults(func=cmd_compact)


def cmd_export(args: argparse.Namespace) -> int:
    from hqpy.journal import file
    from hqpy.journal.records import unstructure

    try:
        loaded = file.read(args.file)
    except file.JournalError as e:
        output_of(args).error(str(e))
        return 1
    if loaded.warning is not None:
        print(f"warning: {loaded.warning}", file=sys.stderr)
    out = sys.stdout
    for record in loaded.records:
        out.write(json.dumps(unstructure(record), separators=(",", ":")) + "\n")
    return 0


def cmd_compact(args: argparse.Namespace) -> int:
    from hqpy.app.journaling import compact
    from hqpy.journal import file

    try:
        before, after = compact(args.file)
    except file.JournalError as e:
        output_of(args).error(str(e))
        return 1
    except OSError as e:
        output_of(args).error(f"Cannot compact journal `{args.file}`: {e.strerror or e}")
        return 1
    print(f"Journal `{args.file}` compacted: {before} records -> {after} records")
    return 0
