"""Herald's configuration: one settings object, built once and passed down."""

from config.settings import Settings, get_settings

__all__ = ["Settings", "get_settings"]
