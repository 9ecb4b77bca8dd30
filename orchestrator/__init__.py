"""reprun: retrain a pinned ML job in a hermetic container and explain any difference."""

__version__ = "0.1.0"
