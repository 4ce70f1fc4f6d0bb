"""Routing: from an envelope to its handler (``router``, ``middleware``), and from the
handler's outcome to an ack, a delayed NAK or a dead letter (``outcomes``, ``dlq``)."""
