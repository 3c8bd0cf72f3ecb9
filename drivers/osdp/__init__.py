"""OSDP card readers and door controllers on RS-485: our own control panel (see README.md)."""
