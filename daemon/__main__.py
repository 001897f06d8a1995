"""`python -m daemon ...`: the stylewatch command from a checkout that is not installed."""

from daemon.cli import main

main()
