"""Adapter lifecycle: registry, merge, export, validate, deploy, workflows."""
