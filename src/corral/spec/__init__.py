"""OCI data: runtime config, image index/manifest/config, descriptors (no I/O but JSON)."""
