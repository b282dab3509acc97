"""The server's journal: an append-only file of framed records from which a restarted server
restores its jobs (`hq server start --journal FILE`)."""
