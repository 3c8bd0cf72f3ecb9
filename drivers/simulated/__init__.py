"""The simulated driver: deterministic devices for commissioning, demos and tests."""
