"""loraflow: take a LoRA adapter from raw data to production."""

__version__ = "0.1.0"
