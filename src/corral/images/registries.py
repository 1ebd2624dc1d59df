"""Where images come from: registries.conf, auth files and CA dirs, as the ecosystem writes them.

    registries.conf   containers-registries.conf(5), version 2 TOML: `[[registry]]` entries
                      (prefix, location, insecure, blocked, `[[registry.mirror]]`) and
                      `unqualified-search-registries`
    auth file         Docker's config.json / containers-auth.json: {"auths": {"host[/path]":
                      {"auth": base64("user:password")}}}
    certs dir         `<dir>/<host[:port]>/*.crt` are CAs; `*.cert` + `*.key` a client cert

Endpoints for a reference: its registry's mirrors in order, then the
registry itself.  Transport: registries (and mirrors) on localhost or
127.0.0.0/8 with no registries.conf entry of their own speak plain HTTP
(as Docker treats them); an entry makes such a registry a normal one.
Everything else is HTTPS, verified against the system CAs plus the
registry's certs dir, unless marked insecure (then TLS is not verified
and plain HTTP is the fallback).
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import tomllib

from corral.images.errors import Blocked, ConfigInvalid
from corral.images.reference import DEFAULT_DOMAIN, Reference

DOCKER_HUB_ENDPOINT = "registry-1.docker.io"
_DOCKER_HUB_AUTH_KEYS = ("docker.io", "index.docker.io", "https://index.docker.io/v1/",
                         "registry-1.docker.io")


class Endpoint:
    """One place to fetch a repository from: a host, the repository's path there, transport."""

    __slots__ = ("host", "repository", "insecure", "plain_http", "mirror", "ca_files",
                 "client_cert")

    def __init__(self, host: str, repository: str, *, insecure: bool, plain_http: bool,
                 mirror: bool, ca_files: list[str], client_cert: tuple[str, str] | None):
        self.host = host
        self.repository = repository
        self.insecure = insecure
        self.plain_http = plain_http
        self.mirror = mirror
        self.ca_files = ca_files
        self.client_cert = client_cert

    @property
    def schemes(self) -> tuple[str, ...]:
        if self.plain_http:
            return ("http",)
        return ("https", "http") if self.insecure else ("https",)

    def __repr__(self) -> str:
        kind = "mirror" if self.mirror else "registry"
        return f"Endpoint({kind} {self.host}/{self.repository}, {'/'.join(self.schemes)})"


class RegistryEntry:
    __slots__ = ("prefix", "location", "insecure", "blocked", "mirrors")

    def __init__(self, prefix: str, location: str, insecure: bool, blocked: bool,
                 mirrors: list[tuple[str, bool]]):
        self.prefix = prefix
        self.location = location
        self.insecure = insecure
        self.blocked = blocked
        self.mirrors = mirrors

    def matches(self, name: str) -> int:
        """The length of the match of `name` (domain/path) against the prefix; 0 if none."""
        prefix = self.prefix
        if prefix.startswith("*."):
            domain = name.split("/", 1)[0]
            return len(prefix) if domain.endswith(prefix[1:]) else 0
        if name == prefix or name.startswith(prefix + "/") or name.startswith(prefix + ":"):
            return len(prefix)
        return 0

    def rewrite(self, name: str, location: str) -> str:
        """`name` with this entry's prefix replaced by `location` (wildcards keep the name)."""
        if self.prefix.startswith("*."):
            return name
        return location + name[len(self.prefix):]


class RegistryConfig:
    def __init__(self, entries: list[RegistryEntry] | None = None,
                 search: list[str] | None = None, auths: dict[str, tuple[str, str]] | None = None,
                 certs_dir: str | None = None):
        self.entries = entries or []
        self.search = search if search is not None else [DEFAULT_DOMAIN]
        self.auths = auths or {}
        self.certs_dir = certs_dir

    @classmethod
    def load(cls, registries_conf: str | None = None, auth_file: str | None = None,
             certs_dir: str | None = None) -> RegistryConfig:
        entries, search = _load_registries_conf(registries_conf) if registries_conf else ([], None)
        auths = _load_auth_file(auth_file) if auth_file else {}
        return cls(entries, search, auths, certs_dir)

    # --- lookups -------------------------------------------------------------------------------
    def entry_for(self, name: str) -> RegistryEntry | None:
        best, best_length = None, 0
        for entry in self.entries:
            length = entry.matches(name)
            if length > best_length:
                best, best_length = entry, length
        return best

    def endpoints(self, ref: Reference) -> list[Endpoint]:
        """Mirrors in order, then the registry itself; a blocked registry is an error."""
        name = ref.name
        entry = self.entry_for(name)
        if entry is not None and entry.blocked:
            raise Blocked(f"registry for {name} is blocked in registries.conf")
        endpoints = []
        for location, insecure in (entry.mirrors if entry else []):
            # A loopback mirror is plain HTTP too, unless it has a [[registry]] entry itself.
            mirror_configured = self.entry_for(location) is not None
            endpoints.append(self._endpoint(entry.rewrite(name, location), insecure, True,
                                            mirror_configured))
        location = entry.rewrite(name, entry.location) if entry else name
        endpoints.append(self._endpoint(location, bool(entry and entry.insecure), False,
                                        entry is not None))
        return endpoints

    def _endpoint(self, location: str, insecure: bool, mirror: bool,
                  configured: bool) -> Endpoint:
        host, _, repository = location.partition("/")
        if host == DEFAULT_DOMAIN:
            host = DOCKER_HUB_ENDPOINT
        ca_files, client_cert = self._certs(host)
        return Endpoint(host, repository, insecure=insecure,
                        plain_http=not configured and _is_loopback(host), mirror=mirror,
                        ca_files=ca_files, client_cert=client_cert)

    def _certs(self, host: str) -> tuple[list[str], tuple[str, str] | None]:
        if not self.certs_dir:
            return [], None
        directory = os.path.join(self.certs_dir, host)
        try:
            names = sorted(os.listdir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return [], None
        cas = [os.path.join(directory, n) for n in names if n.endswith(".crt")]
        certs = [n for n in names if n.endswith(".cert")]
        client = None
        if certs:
            key = certs[0][:-5] + ".key"
            if key not in names:
                raise ConfigInvalid(f"{directory}: client certificate {certs[0]} has no {key}")
            client = (os.path.join(directory, certs[0]), os.path.join(directory, key))
        return cas, client

    def credentials(self, host: str, repository: str) -> tuple[str, str] | None:
        """The auth file's credentials for a repository: the longest matching key wins."""
        keys = [f"{host}/{repository}"]
        parts = repository.split("/")
        keys += [f"{host}/{'/'.join(parts[:i])}" for i in range(len(parts) - 1, 0, -1)]
        keys.append(host)
        if host == DOCKER_HUB_ENDPOINT:
            keys += list(_DOCKER_HUB_AUTH_KEYS)
        for key in keys:
            if key in self.auths:
                return self.auths[key]
        return None


def _is_loopback(host: str) -> bool:
    hostname = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    hostname = hostname.strip("[]")
    if hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def _load_registries_conf(path: str) -> tuple[list[RegistryEntry], list[str] | None]:
    try:
        with open(path, "rb") as f:
            document = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigInvalid(f"registries.conf {path}: no such file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigInvalid(f"registries.conf {path}: not valid TOML: {e}") from None
    if "registries" in document:
        raise ConfigInvalid(f"registries.conf {path}: version 1 format ([registries.*]) is "
                            "not supported; use [[registry]] tables (version 2)")
    search = document.get("unqualified-search-registries")
    if search is not None and not (isinstance(search, list)
                                   and all(isinstance(s, str) for s in search)):
        raise ConfigInvalid(f"registries.conf {path}: unqualified-search-registries must be "
                            "a list of strings")
    tables = document.get("registry", [])
    if not isinstance(tables, list):
        raise ConfigInvalid(f"registries.conf {path}: registry must be an array of tables")
    entries = [_entry(table, f"registries.conf {path}: registry[{i}]")
               for i, table in enumerate(tables)]
    return entries, search


def _entry(table, where: str) -> RegistryEntry:
    if not isinstance(table, dict):
        raise ConfigInvalid(f"{where}: not a table")
    location = _string(table, "location", where)
    prefix = _string(table, "prefix", where) or location
    if not prefix:
        raise ConfigInvalid(f"{where}: needs a location or a prefix")
    if prefix.startswith("*.") and location:
        raise ConfigInvalid(f"{where}: a wildcard prefix {prefix!r} cannot have a location")
    mirrors = []
    for j, mirror in enumerate(table.get("mirror", [])):
        mirror_where = f"{where}.mirror[{j}]"
        if not isinstance(mirror, dict) or not _string(mirror, "location", mirror_where):
            raise ConfigInvalid(f"{mirror_where}: needs a location")
        mirrors.append((mirror["location"].rstrip("/"), _bool(mirror, "insecure", mirror_where)))
    return RegistryEntry(prefix.rstrip("/"), (location or prefix).rstrip("/"),
                         _bool(table, "insecure", where), _bool(table, "blocked", where), mirrors)


def _string(table: dict, key: str, where: str) -> str:
    value = table.get(key, "")
    if not isinstance(value, str):
        raise ConfigInvalid(f"{where}.{key}: must be a string")
    return value


def _bool(table: dict, key: str, where: str) -> bool:
    value = table.get(key, False)
    if not isinstance(value, bool):
        raise ConfigInvalid(f"{where}.{key}: must be true or false")
    return value


def _load_auth_file(path: str) -> dict[str, tuple[str, str]]:
    try:
        with open(path, "rb") as f:
            document = json.load(f)
    except FileNotFoundError:
        raise ConfigInvalid(f"auth file {path}: no such file") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigInvalid(f"auth file {path}: not JSON: {e}") from None
    auths = document.get("auths", {}) if isinstance(document, dict) else None
    if not isinstance(auths, dict):
        raise ConfigInvalid(f"auth file {path}: 'auths' must be an object")
    result = {}
    for key, value in auths.items():
        if not isinstance(value, dict):
            raise ConfigInvalid(f"auth file {path}: auths[{key!r}] must be an object")
        if value.get("auth"):
            try:
                user, sep, password = base64.b64decode(value["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                sep = ""
            if not sep:
                raise ConfigInvalid(f"auth file {path}: auths[{key!r}].auth is not "
                                    "base64 of user:password")
        elif value.get("username"):
            user, password = value["username"], value.get("password", "")
        else:
            continue  # e.g. an identity token for a credential helper: not supported
        host = key.removeprefix("https://").removeprefix("http://").rstrip("/")
        result[key if key.startswith("https://index.docker.io") else host] = (user, password)
    return result
