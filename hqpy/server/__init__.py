"""The server: jobs, tasks, workers, the scheduler and the sessions of clients and workers."""
