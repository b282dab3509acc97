"""Batch-system adapters: render a submit script, submit it, query and cancel allocations."""
