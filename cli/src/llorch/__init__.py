"""llorch — the command-line client of llama-orch's orchestratord.

``llorch DOMAIN ACTION [ARGS]``: ``jobs`` (submit, watch, status, list, cancel), ``pools``
(list, show), ``scheduler`` (show, validate, dry-run, apply), ``config`` (validate, show).
Types and validation come from orchestrator_core; all HTTP goes through
:class:`llorch.client.OrchestratorClient`. Exit codes: :class:`llorch.exitcodes.ExitCode`.

The public API is exactly ``__all__``.
"""

from llorch.client import JobPage, OrchestratorClient
from llorch.exitcodes import ExitCode
from llorch.version import __version__

__all__ = ["ExitCode", "JobPage", "OrchestratorClient", "__version__"]
