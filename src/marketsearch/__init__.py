"""marketsearch: listings classification and search."""
