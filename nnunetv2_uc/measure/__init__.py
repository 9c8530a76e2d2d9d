"""Measuring networks: parameters and MACs (``cost``), timed training steps and inference (``bench``), and the
fresh-process step timer both use (``timing``)."""
