"""Benchmarks behind ``scripts/bench``.

``core`` is the entry point; the harness is split by concern: ``config`` (sizes, cases, targets), ``orchestration``
(the parent: worker processes, interleaved rounds, the cases, the command line), ``worker`` (the ``--serve``
process), ``runners`` and ``datacase`` (what a worker measures), ``common`` (clocks, models, tasks shared by the
runners) and ``render`` (statistics and the report). The plugin modules ``vision``, ``text`` and ``audio`` (owned
by the plugin engineers) each expose ``run(seconds=5.0, ...) -> dict`` with their pipeline's throughput per loader
worker; the plugins case calls them when they exist.
"""
