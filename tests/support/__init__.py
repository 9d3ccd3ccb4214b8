"""Test-only helpers shared by the test folders (never shipped in a distribution).

* :mod:`tests.support.llorch_fake` — an in-process stand-in for orchestratord's HTTP API and a
  runner for ``llorch`` commands against it (the CLI's unit-test seam).
"""
