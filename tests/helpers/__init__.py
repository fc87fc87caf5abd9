"""Helpers that tests share: plain modules, imported by name (fixtures stay in conftest.py)."""
