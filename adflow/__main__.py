"""`python -m adflow` = the `adflow` command (the console starts runs this way, with its own interpreter)."""

from adflow.cli import app

app(prog_name="adflow")
