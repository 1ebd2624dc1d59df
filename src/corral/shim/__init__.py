"""The per-pod shim: parent of the pod's containers, owner of their stdio and exit codes."""
