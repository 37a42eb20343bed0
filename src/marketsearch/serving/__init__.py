"""Serving: the request contract, the search engine and the KServe model server."""
