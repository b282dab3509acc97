"""hqpy: an auto-scaling allocation server for HPC task arrays, compatible with HyperQueue's CLI."""

__version__ = "0.1.0"
