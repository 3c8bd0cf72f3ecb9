"""Community edge agent: connects a residential community's devices to the city platform."""

__version__ = "0.1.0"

__all__ = ["__version__"]
