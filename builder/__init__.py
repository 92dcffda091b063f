"""The host side of xshim: the ``xshim`` CLI and library."""
