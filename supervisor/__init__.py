"""run-supervisor: keeps long simulation runs alive, visible and controllable."""

__version__ = "0.1.0"
