"""Command-line tools for the people who connect analysers (``labgate astm decode FILE`` ...).

Each tool is a module with ``main(argv: list[str]) -> int``, wired into the `labgate` command by
`middleware.cli`. Exit codes as for `labgate`: 0 success, 1 the input has problems, 2 usage.
"""
