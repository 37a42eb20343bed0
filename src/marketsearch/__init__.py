"""marketsearch: listings classification and search."""

__version__ = "0.1.0"
