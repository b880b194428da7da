"""The HTTP face of a node: smart HTTP, ``/api/v3``, ``/status`` and more."""
