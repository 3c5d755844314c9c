"""openft: a self-hosted, OpenAI-compatible fine-tuning service for open-weight models."""

__version__ = "0.1.0"
