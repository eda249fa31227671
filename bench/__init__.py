"""StemeDB benchmarks: engine write path, restart and replay, HTTP beside PostgreSQL/Redis.

See bench/README.md and docs/benchmarks.md for the commands and the measured results.
"""
