"""Monitoring: what a node measures about itself, how it judges it, and how it tells others.

``system`` samples the machine (disk of the data dir, memory, load), ``checks`` judges facts
against thresholds with pure functions, ``facts`` gathers a node's facts (cached, so scrapes stay
cheap), ``metrics`` exports them in the Prometheus format (``rules`` alerts on some of them),
``overview`` assembles what the status page shows, and ``page`` is that page. ``running`` is the
server's record of where it listens, which ``probe`` reads to ask the server how it is.
"""
