"""Thinking parser, console output and the interactive REPL."""
