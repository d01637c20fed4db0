"""labgate: protocols."""
