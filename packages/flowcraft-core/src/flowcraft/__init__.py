"""Flowcraft for Python."""
