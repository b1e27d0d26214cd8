"""runs_app: a Django control room for Assistants-protocol runs."""

__version__ = "0.1.0"
