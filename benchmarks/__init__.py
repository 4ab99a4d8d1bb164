"""outbound's benchmark suite: what managing calls costs, measured side by side against bare clients.

Run ``python3 benchmarks/run.py`` (``--help`` for the flags); results land in ``benchmarks/RESULTS.md``.
"""
