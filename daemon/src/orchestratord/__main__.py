"""``python -m orchestratord``."""

from orchestratord.cli import main

raise SystemExit(main())
