"""Consumers: receive deliveries from the durable consumer — pull (``fetch``) or push
(the deliver subject), chosen by ``consumer_mode`` — and hand them to the inbox.

Both share workers, per-record partitioning, in-progress keep-alives, supervision
and ``start()`` / ``stop(timeout)`` (``base``); :func:`bridge.runtime.make_consumer`
picks the class.
"""
