"""Benchmarks: in-process throughput, HTTP load, soak."""
