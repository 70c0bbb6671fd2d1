"""`python -m r2migrate` runs the command line."""

from r2migrate.cli.main import main

main()
