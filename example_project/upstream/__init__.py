"""The simulated upstream: the test suite's controllable upstream (``tests/upstream.py``), run as a process."""
