"""Peers side by side (``make bench-peers``): other Python outbox libraries for NATS
JetStream on the bridge's relay workload, servers and raw baseline.  The harness
(:mod:`benchmarks.peers.harness`) runs in the project's venv; each peer runs in a
script of its own (``run_<peer>.py``) with the peers' virtualenv's python."""
