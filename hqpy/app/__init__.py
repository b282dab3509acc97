"""The composition root: builds the server process from its parts and wires them together."""
