"""tuneforge: self-hosted, Bedrock-compatible customization of open language models."""

__version__ = "0.1.0"
