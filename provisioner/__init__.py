"""Admin tooling for restrictive mode: plan / apply / verify the JetStream topology
of a synced pair with admin credentials, and generate the nats-server permissions
for the apps (``python -m provisioner`` or ``bridge-provision``)."""
