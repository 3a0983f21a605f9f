"""``python -m churnsync``: the command line."""

from churnsync.cli import main

main()
