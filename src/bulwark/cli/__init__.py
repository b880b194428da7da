"""The ``bulwark`` command line."""
