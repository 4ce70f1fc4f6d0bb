"""The outbox: capture a change's event in the writer's transaction (``capture``) and
publish committed rows to JetStream (``relay``: claim → publish → settle)."""
