"""The exec supervisor: the image side of xshim.

This package is the ground floor. It never imports ``xshim.builder`` and keeps its imports to the
standard library, because it is frozen into the bundle that runs inside foreign images.
"""
