"""The one version string, shared by the shim and the builder."""

__version__ = "0.1.0"
