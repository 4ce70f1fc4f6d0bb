"""System B: the shared domain with System B's defaults (app `system_b`, port 3001)."""
