"""`python -m orchestrator.cli`: the same as the `reprun` command."""
from orchestrator.cli.app import main

main()
