"""The ``sentinel`` command line: ``main`` parses and dispatches; one module per subcommand."""

__all__ = []
