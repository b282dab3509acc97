"""Helpers shared by the client, the server and the worker: parsing and formatting of values."""
