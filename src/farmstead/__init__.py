"""farmstead: the state server of a task farm."""

__version__ = "0.1.0"
