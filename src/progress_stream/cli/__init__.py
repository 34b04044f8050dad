"""The ``progress`` command line."""
