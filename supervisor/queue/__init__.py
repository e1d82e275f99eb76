"""The queue's pure decisions: who starts with which resources, retries, sweeps, GPUs."""
