"""Base models and adapters on disk: resolving, converting and loading them."""
