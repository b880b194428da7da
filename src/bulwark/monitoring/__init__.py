"""Monitoring: what a node measures about itself, how it judges it, and how it tells others.

``system`` samples the machine (disk of the data dir, memory, load), ``checks`` judges facts
against thresholds with pure functions, ``facts`` gathers a node's facts (cached, so scrapes stay
cheap), ``metrics`` exports them in the Prometheus format, ``overview`` assembles what the status
page shows, and ``page`` is that page.
"""
