"""The daemon's HTTP API (and, with the console issue, the web console)."""
