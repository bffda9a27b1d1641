"""Measurement, alike for every model: ``latency`` (interleaved timing), ``memory_probe``
(peak memory in a fresh process), ``metrics`` (quality), ``bench`` (side by side), ``report``
(``report.json``) with ``tables``, ``markdown`` and ``plot``, ``gates`` (CI bounds),
``inspect`` (``compress inspect``), ``formatting``."""
