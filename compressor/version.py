"""The package version (a leaf, so any layer can report it without importing the root)."""

__version__ = "0.1.0"
