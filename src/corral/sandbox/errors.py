"""What can go wrong with a request, in the CRI's terms (corrald maps each to a gRPC code)."""


class SandboxError(Exception):
    """Base: an unexpected failure (gRPC INTERNAL), with a message for the caller."""


class NotFound(SandboxError):
    pass


class AlreadyExists(SandboxError):
    pass


class InvalidArgument(SandboxError):
    pass


class FailedPrecondition(SandboxError):
    """The object is in the wrong state for the request (e.g. start of a running container)."""


class DeadlineExceeded(SandboxError):
    pass
