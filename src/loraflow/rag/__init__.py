"""Retrieval-augmented generation: load, chunk, embed, store, retrieve, prompt."""
