"""The inbox: apply each delivered event once, in one transaction with its handler,
then acknowledge (``processor``); per-record order and retention."""
