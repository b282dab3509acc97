"""The wire protocol: frames, the authenticated handshake and the messages."""
