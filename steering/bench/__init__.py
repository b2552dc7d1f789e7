"""The benchmark: ``python -m steering.bench`` (``make bench``)."""
