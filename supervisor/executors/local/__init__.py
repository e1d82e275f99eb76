"""The local executor: runs on this machine under a per-run keeper."""
