"""Measuring networks: parameters, MACs and the fresh-process step timer (``cost``), timed training steps and
inference (``bench``, which times with ``cost``'s step timer)."""
