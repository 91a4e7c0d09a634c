"""The `farm` command line: thin Typer commands over the library."""
