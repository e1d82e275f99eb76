"""`runsup metrics` and the daemon's /metrics endpoint (SPEC section 14)."""
