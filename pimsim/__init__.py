"""pimsim: cycle-accurate simulator of processing-in-memory hardware for GPT inference."""

__version__ = "0.1.0"
