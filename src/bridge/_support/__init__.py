"""Generic building blocks with no bridge concept in them (private to ``bridge``):
backoff with jitter, a deadline for dead connections, duration strings, a periodic
step with start/stop, a token bucket."""
