"""Client side of the protocol: a connection to a running server and typed calls on it."""
