"""Benchmarks (``make bench``): each figure is reported beside a raw baseline measured
in the same run, because this machine is shared and noisy; ratios are what to compare."""
