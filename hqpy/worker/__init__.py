"""The worker agent: it connects to the server, runs tasks as processes and reports back."""
