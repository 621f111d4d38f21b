"""The router: backend services call it instead of the frontier API (see README.md)."""
