"""Anti-entropy: find rows that differ from the peer and re-emit the newer version
(``reconciler``, ``responder``); re-emit every row (``backfill``)."""
