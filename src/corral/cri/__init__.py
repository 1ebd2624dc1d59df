"""The CRI: gRPC servicers over the core, and CRI → OCI translation."""
