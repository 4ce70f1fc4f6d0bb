"""System A: the shared domain with System A's defaults (app `system_a`, port 3000)."""
