"""Provisioning: the stream and consumers a config needs (``specs``), plan / apply /
verify against a server (``provisioner``), least-privilege permissions and the
runtime checks of restrictive mode."""
