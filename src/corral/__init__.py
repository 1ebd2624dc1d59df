"""corral: a Linux container runtime stack in Python."""

__version__ = "0.1.0"
