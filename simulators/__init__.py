"""labgate: simulators."""
