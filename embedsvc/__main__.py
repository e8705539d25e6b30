"""``python -m embedsvc``: the same CLI as the ``embedsvc`` command."""

from embedsvc.cli import app

app(prog_name="embedsvc")
