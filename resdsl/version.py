"""The version of resdsl, in a module of its own so that every layer can read it without importing the package's
public API (which would pull in the torch lowering)."""

__version__ = "0.1.0"
