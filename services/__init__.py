"""System A and System B: two FastAPI services kept in sync by :mod:`bridge`.

The domain (models, schemas, routes, sync handlers) is written once in
:mod:`services.shared`; ``services.system_a`` and ``services.system_b`` only set
their defaults (app names, ports).  Importing any of these modules connects to
nothing: connections are made in the FastAPI lifespan.
"""
