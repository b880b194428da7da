"""Webhooks: hooks and their deliveries, recorded with the change that causes them and delivered
at least once by a companion of the serving node."""
