"""The server's HTTP side: Prometheus `/metrics`, the status page and its JSON endpoint.

It runs on its own port (`hq server start --metrics-port`), inside the server's trio loop, so
every answer reads the server's state on the thread that owns it. It only ever reads: nothing
sent to this port can change a job, a worker or a queue, and it never speaks the client or
worker protocol.
"""
