"""Fixtures for a real S3 HTTP server on loopback (moto's server mode). Filled in by the storage work."""
