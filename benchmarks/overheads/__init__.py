"""The sections of `benchmarks/scale_overheads.py`, a module each, and what they share (`common`)."""
