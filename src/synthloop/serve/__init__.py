"""Serving: the exported model format, the HTTP server and its fast path."""
