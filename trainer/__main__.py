"""``python -m trainer``: see ``trainer.cli``."""

from trainer.cli import main

main(prog_name="python -m trainer")
