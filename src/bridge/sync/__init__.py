"""Convergence: the last-writer-wins order of row versions (``versions``) and the one
applier of incoming versions (``lww``), for handlers of any synced table."""
