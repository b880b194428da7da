"""Bulwark: a self-hosted Git server built for availability."""

__version__ = "0.1.0"
