"""Implementations of the `kvjax` subcommands (argument parsing lives in kvjax.cli)."""
