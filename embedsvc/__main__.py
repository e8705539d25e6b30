"""``python -m embedsvc``: the same CLI as the ``embedsvc`` command."""

from embedsvc.cli import run

run()
