"""The runtime layer's exceptions.  The CLI turns each into a one-line error and exit 1."""

from __future__ import annotations


class RuntimeFailure(Exception):
    """Base of every error corral.runtime reports to its caller."""


class ContainerNotFound(RuntimeFailure):
    def __init__(self, container_id: str):
        super().__init__("container does not exist")
        self.container_id = container_id


class ContainerExists(RuntimeFailure):
    def __init__(self, container_id: str):
        super().__init__(f"container with id exists: {container_id}")


class InvalidID(RuntimeFailure):
    pass


class InvalidState(RuntimeFailure):
    """The operation does not apply to the container in its current status."""


class ConfigInvalid(RuntimeFailure):
    """config.json is missing, malformed or asks for what this host cannot do."""


class InitFailed(RuntimeFailure):
    """The container's init process reported an error while setting up."""


class Interrupted(RuntimeFailure):
    """A signal asked the runtime to stop; what it had begun is undone."""

    def __init__(self, signum: int):
        super().__init__(f"interrupted by signal {signum}; nothing was left behind")
        self.signum = signum
