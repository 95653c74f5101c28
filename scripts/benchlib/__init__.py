"""Benchmarks behind ``scripts/bench``.

``core`` is the harness (orchestration, the core cases, the BENCHMARKS.md writer). The plugin modules
``vision``, ``text`` and ``audio`` (owned by the plugin engineers) each expose
``run(seconds=5.0, ...) -> dict`` with their pipeline's throughput per loader worker; ``core`` calls them when
they exist.
"""
