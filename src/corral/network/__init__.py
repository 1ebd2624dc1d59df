"""Pod networking: pinned namespaces and the real CNI plugins."""
