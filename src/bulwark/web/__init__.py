"""The web interface: pages rendered on the server, a thin adapter over the services."""
