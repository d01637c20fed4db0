"""labgate: middleware."""
