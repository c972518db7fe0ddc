"""``python -m diffloc ...`` runs the command line."""
from diffloc.cli.app import main

main()
