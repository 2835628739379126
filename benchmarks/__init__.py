"""emprobe benchmarks: each ``bench_*.py`` module defines ``run(quick: bool) -> list[dict]``.

Every result dict has ``name``, ``ratio`` (measured side by side in one run),
``goal`` (text) and ``details`` (numbers behind the ratio). ``python -m benchmarks``
runs them all and prints one line per result; ``--only NAME`` runs one module and
``--json FILE`` writes the results.
"""
