"""``python -m llorch_pool.sim`` = ``llorch-sim``."""

from llorch_pool.sim.cli import main

raise SystemExit(main())
