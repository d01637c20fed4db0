"""labgate: drivers."""
