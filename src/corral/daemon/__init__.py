"""corrald: the high-level runtime daemon serving Kubernetes' CRI."""
