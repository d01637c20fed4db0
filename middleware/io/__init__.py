"""Transports: the only code that knows a serial line from a TCP socket."""
