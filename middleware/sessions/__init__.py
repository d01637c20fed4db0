"""One session per analyser connection: the protocol core, the driver and the store, joined."""
