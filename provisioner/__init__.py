"""Admin tooling for restrictive mode: ``bridge-provision`` (``python -m provisioner``),
a thin entry point over :mod:`bridge.cli.provision` — plan / apply / verify the
JetStream topology of a synced pair with admin credentials, and generate the
nats-server permissions for the apps — plus the files of a local restrictive stack
(:mod:`provisioner.stack`)."""
