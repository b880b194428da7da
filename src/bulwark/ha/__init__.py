"""High availability: one primary, replicas fed by a change stream, one-command promotion.

- :mod:`state`      what this node is in the HA pair (role, epoch, primary, replicas)
- :mod:`health`     pure decisions: stream health (OK/WARNING/CRITICAL), fencing, peers up or down
- :mod:`client`     the replica's calls to the primary's ``/manage/v1/replication``
- :mod:`replicator` the replica's loop: pull changes, apply them, sync repositories
- :mod:`watch`      the replica's watch of its primary's ``/status``
- :mod:`promote`    turning a replica into the primary, fencing the old one
"""
