"""Benchmarks of the L² compressor against its peers; see bench/run_all.py."""
