"""Image references, parsed and normalized as Docker and containerd do.

    busybox                      → docker.io/library/busybox:latest
    quay.io/org/app:1.2          → quay.io/org/app:1.2
    localhost:5000/app           → localhost:5000/app:latest
    app@sha256:<64 hex>          → docker.io/library/app@sha256:…   (no tag added)
    app:1.0@sha256:<64 hex>      → both kept; the digest is what is pulled

The grammar is distribution/reference's: a first component is a registry
host if it has a "." or ":" or is "localhost"; path components are
lower-case alphanumerics joined by ".", "_", "__" or dashes; tags are at
most 128 word characters, dots and dashes, not starting with either.
"""

from __future__ import annotations

import re

from corral.images.errors import InvalidReference

DEFAULT_DOMAIN = "docker.io"
LEGACY_DOMAINS = ("index.docker.io", "registry-1.docker.io")
OFFICIAL_PREFIX = "library/"
DEFAULT_TAG = "latest"
NAME_MAX = 255

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_DOMAIN = re.compile(
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*"
    r"[a-zA-Z0-9])?))*(?::[0-9]+)?|\[[0-9a-fA-F:.]+\](?::[0-9]+)?")
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}")
_HEX = {"sha256": 64, "sha384": 96, "sha512": 128}


class Reference:
    __slots__ = ("domain", "path", "tag", "digest")

    def __init__(self, domain: str, path: str, tag: str | None = None,
                 digest: str | None = None):
        self.domain = domain
        self.path = path
        self.tag = tag
        self.digest = digest

    @property
    def name(self) -> str:
        """The repository: domain/path."""
        return f"{self.domain}/{self.path}"

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text

    def __repr__(self) -> str:
        return f"Reference({str(self)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Reference) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    @property
    def familiar(self) -> str:
        """As people write it: docker.io/library/ left out."""
        text = str(self)
        for prefix in (f"{DEFAULT_DOMAIN}/{OFFICIAL_PREFIX}", f"{DEFAULT_DOMAIN}/"):
            if text.startswith(prefix):
                return text[len(prefix):]
        return text


def parse(text: str) -> Reference:
    """A normalized reference; a name without tag or digest gets :latest."""
    if not isinstance(text, str) or not text:
        raise InvalidReference("invalid reference: empty")
    if text != text.strip() or any(c.isspace() for c in text):
        raise InvalidReference(f"invalid reference {text!r}: contains whitespace")
    remainder, _, digest = text.partition("@")
    if digest:
        _check_digest(digest, text)
    name, tag = _split_tag(remainder)
    if tag is not None and not _TAG.fullmatch(tag):
        raise InvalidReference(f"invalid reference {text!r}: bad tag {tag!r}")
    domain, path = _split_domain(name, text)
    if len(f"{domain}/{path}") > NAME_MAX:
        raise InvalidReference(f"invalid reference {text!r}: name longer than {NAME_MAX}")
    if tag is None and not digest:
        tag = DEFAULT_TAG
    return Reference(domain, path, tag, digest or None)


def _split_tag(remainder: str) -> tuple[str, str | None]:
    """The tag is after the last ':' that follows the last '/' (a port is not a tag)."""
    colon = remainder.rfind(":")
    if colon > remainder.rfind("/"):
        return remainder[:colon], remainder[colon + 1:]
    return remainder, None


def _split_domain(name: str, text: str) -> tuple[str, str]:
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        if not _DOMAIN.fullmatch(first):
            raise InvalidReference(f"invalid reference {text!r}: bad registry {first!r}")
        domain, path = first, rest
    else:
        domain, path = DEFAULT_DOMAIN, name
    if domain in LEGACY_DOMAINS:
        domain = DEFAULT_DOMAIN
    if not path:
        raise InvalidReference(f"invalid reference {text!r}: no repository name")
    for component in path.split("/"):
        if not _COMPONENT.fullmatch(component):
            why = "must be lower case" if component.lower() != component else "bad name"
            raise InvalidReference(f"invalid reference {text!r}: {why} {component!r}")
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = OFFICIAL_PREFIX + path
    return domain, path


def _check_digest(digest: str, text: str) -> None:
    if not _DIGEST.fullmatch(digest):
        raise InvalidReference(f"invalid reference {text!r}: bad digest {digest!r}")
    algorithm, _, encoded = digest.partition(":")
    length = _HEX.get(algorithm)
    if length is not None and (len(encoded) != length or
                               not re.fullmatch(r"[0-9a-f]+", encoded)):
        raise InvalidReference(f"invalid reference {text!r}: a {algorithm} digest is "
                               f"{length} lower-case hex digits")
