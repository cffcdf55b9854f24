"""The monitoring pages (server-rendered)."""
