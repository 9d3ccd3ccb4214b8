"""``python -m llorch`` runs the CLI."""

from llorch.app import main

main()
