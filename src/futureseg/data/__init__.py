"""Stage 1, the data: the synthetic dataset, the fail-fast data check, per-channel mean/std
and the frame caches every later stage reads."""
