"""`python -m harness` = the `harness` command."""

from harness.entry import main

main()
