"""``python -m apportion``: the ``apportion`` command, for when its script is not on PATH."""

from apportion.cli.app import main

main()
