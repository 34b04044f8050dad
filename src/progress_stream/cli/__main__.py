"""``python -m progress_stream.cli``: the ``progress`` command."""

from progress_stream.cli.main import app

app()
