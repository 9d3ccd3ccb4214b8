"""``python -m llorch_pool.agent`` = ``llorch-pool``."""

from llorch_pool.agent.cli import main

raise SystemExit(main())
