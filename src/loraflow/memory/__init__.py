"""Typed story memory for the writing studio, and its triggers."""
