"""Test-suite settings shared by every test folder.

Hypothesis: under CI (``CI`` set, as ``.ci/run`` runs) the property tests draw the same
examples on every run (``derandomize``) and keep no example database, so a green CI run is
reproducible; locally they explore new random examples each run. ``HYPOTHESIS_PROFILE``
picks a profile explicitly (``ci`` or ``dev``).
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None, deadline=None)
settings.register_profile("dev", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))
