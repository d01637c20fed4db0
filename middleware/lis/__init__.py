"""The LIS side: building results messages and delivering the outbox over MLLP."""
