"""Faust agents, one per file, discovered by pipeline.app (``autodiscover=["agents"]``)."""
