"""`hq pool set|list|remove`: named concurrency pools (StepUp's `pool(name, size)`)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from hqpy.cli.common import client_command, positive_int
from hqpy.cli.output import Output
from hqpy.client.blocking import BlockingConnection
from hqpy.protocol import messages as m

if TYPE_CHECKING:
    from hqpy.cli.main import CommandTree, Subparsers


def pool_size(text: str) -> int:
    """argparse type for a pool size: the server's range (1 to 2^31 - 1), refused as a usage
    error here rather than after a round trip."""
    from hqpy.server.pools import MAX_POOL_SIZE

    value = positive_int(text)
    if value > MAX_POOL_SIZE:
        raise argparse.ArgumentTypeError(f"`{text}` is too large (at most {MAX_POOL_SIZE})")
    return value


def register(tree: CommandTree, nouns: Subparsers) -> None:
    pool = tree.command(nouns, "pool", "Concurrency pools: how many tasks of a kind run at once")
    verbs = tree.group(pool, "verb")
    p = tree.command(verbs, "set", "Create a pool or resize it")
    p.add_argument("name", help="Pool name: letters, digits or _.-")
    p.add_argument("size", type=pool_size, help="Tasks of the pool that may run at once")
    p.set_defaults(func=cmd_set)

    p = tree.command(verbs, "list", "List pools with their running and waiting tasks")
    p.set_defaults(func=cmd_list)

    p = tree.command(verbs, "remove", "Remove a pool none of whose tasks waits or runs")
    p.add_argument("name")
    p.set_defaults(func=cmd_remove)


@client_command
def cmd_set(args: argparse.Namespace, conn: BlockingConnection, out: Output) -> None:
    conn.request(m.PoolSetRequest(args.name, args.size), m.OkResponse)
    out.empty()


@client_command
def cmd_list(args: argparse.Namespace, conn: BlockingConnection, out: Output) -> None:
    resp = conn.request(m.PoolListRequest(), m.PoolListResponse)
    out.pool_list(resp.pools)


@client_command
def cmd_remove(args: argparse.Namespace, conn: BlockingConnection, out: Output) -> None:
    conn.request(m.PoolRemoveRequest(args.name), m.OkResponse)
    out.empty()
