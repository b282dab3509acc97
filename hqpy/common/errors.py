"""Errors that every layer may raise and the client sessions turn into answers."""

from __future__ import annotations


class RequestError(Exception):
    """A client request that cannot be carried out; the message goes back to the client as
    one line that names what is wrong (and, where it can, how to fix it)."""
