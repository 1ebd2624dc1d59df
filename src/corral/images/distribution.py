"""The OCI distribution API (registry v2), read side: ping, auth, manifests, blobs.

One `Repository` talks to one repository on one endpoint.  Auth follows
the challenge the registry gives: `Basic` sends the credentials; `Bearer`
gets a token from the realm for the repository's pull scope (with the
credentials, if any), caches it per scope until it expires, and asks again
once on a 401.  Failures that may pass (5xx, 429, a dropped or refused
connection, a read timeout) are retried with backoff; a blob download that
breaks resumes where it stopped with a Range request.  Nothing read from
the network is trusted: manifests are size-bounded and their digests
checked; blobs go through the content store's verifying writer.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.parse

import urllib3
from urllib3.exceptions import HTTPError as TransportError
from urllib3.exceptions import SSLError

from corral.images.content import BlobWriter
from corral.images.errors import (
    ContentInvalid,
    DigestMismatch,
    ImageError,
    NotFound,
    PermissionDenied,
    RegistryFailed,
    RegistryUnavailable,
    Unauthenticated,
    Unsupported,
)
from corral.images.registries import Endpoint
from corral.spec.image import (
    MEDIA_DOCKER_MANIFEST,
    MEDIA_DOCKER_MANIFEST_LIST,
    MEDIA_INDEX,
    MEDIA_MANIFEST,
    sha256_digest,
)

MEDIA_DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
MEDIA_DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
MANIFEST_ACCEPT = ", ".join((MEDIA_INDEX, MEDIA_MANIFEST, MEDIA_DOCKER_MANIFEST_LIST,
                             MEDIA_DOCKER_MANIFEST, MEDIA_DOCKER_SCHEMA1_SIGNED,
                             MEDIA_DOCKER_SCHEMA1))
MANIFEST_MAX = 4 << 20  # containerd's limit for manifests and indexes
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_CHUNK = 1 << 20
# urllib3 follows redirects (blob storage behind a CDN) and strips Authorization
# when they leave the host; every other retry is ours, so it can resume a blob.
_FOLLOW_REDIRECTS_ONLY = urllib3.Retry(total=None, connect=0, read=0, status=0, other=0,
                                       redirect=5, raise_on_redirect=True)


class RetryPolicy:
    def __init__(self, attempts: int = 5, first_delay: float = 0.2, max_delay: float = 5.0):
        self.attempts = attempts
        self.first_delay = first_delay
        self.max_delay = max_delay

    def delays(self):
        """Seconds to sleep before each retry; as many as attempts - 1."""
        delay = self.first_delay
        for _ in range(self.attempts - 1):
            yield delay
            delay = min(delay * 2, self.max_delay)


class Transport:
    """Connection pools per endpoint (TLS settings differ), shared by all of a pull's threads."""

    def __init__(self, max_connections: int = 4, timeout: float = 30.0):
        self.max_connections = max_connections
        self.timeout = urllib3.Timeout(connect=10.0, read=timeout)
        self._pools: dict[tuple, urllib3.PoolManager] = {}
        self._lock = threading.Lock()

    def pool(self, endpoint: Endpoint, verify: bool) -> urllib3.PoolManager:
        key = (endpoint.host, verify, tuple(endpoint.ca_files), endpoint.client_cert)
        with self._lock:
            pool = self._pools.get(key)
            if pool is None:
                options = {"maxsize": self.max_connections, "block": False,
                           "timeout": self.timeout, "retries": _FOLLOW_REDIRECTS_ONLY}
                if verify:
                    options["cert_reqs"] = "CERT_REQUIRED"
                    if endpoint.ca_files:
                        options["ca_certs"] = None
                        options["ssl_context"] = _ssl_context(endpoint.ca_files)
                else:
                    # registries.conf said `insecure = true`: asked for, so not warned about
                    urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
                    options["cert_reqs"] = "CERT_NONE"
                    options["assert_hostname"] = False
                if endpoint.client_cert:
                    options["cert_file"], options["key_file"] = endpoint.client_cert
                pool = self._pools[key] = urllib3.PoolManager(**options)
            return pool

    def close(self) -> None:
        with self._lock:
            for pool in self._pools.values():
                pool.clear()
            self._pools.clear()


def _ssl_context(ca_files: list[str]):
    import ssl

    context = ssl.create_default_context()
    for ca in ca_files:
        context.load_verify_locations(cafile=ca)
    return context


class Repository:
    def __init__(self, endpoint: Endpoint, transport: Transport,
                 credentials: tuple[str, str] | None = None,
                 retry: RetryPolicy | None = None):
        self.endpoint = endpoint
        self.transport = transport
        self.credentials = credentials
        self.retry = retry or RetryPolicy()
        self.base_url: str | None = None
        self._authorization: str | None = None
        self._challenge: tuple[str, dict] | None = None
        self._token_expires = 0.0
        self._auth_lock = threading.Lock()
        # A ping decides between schemes and between mirrors: fail over fast.
        self._ping_retry = RetryPolicy(attempts=2, first_delay=0.1)

    @property
    def what(self) -> str:
        return f"{self.endpoint.host}/{self.endpoint.repository}"

    # --- connection and auth --------------------------------------------------------------------
    def ping(self) -> None:
        """GET /v2/ on each allowed scheme; learn the auth challenge."""
        errors = []
        for scheme in self.endpoint.schemes:
            url = f"{scheme}://{self.endpoint.host}/v2/"
            try:
                response = self._send("GET", url, authorize=False, retry=self._ping_retry)
            except RegistryUnavailable as e:
                errors.append(str(e))
                continue
            response.drain_conn()
            self.base_url = f"{scheme}://{self.endpoint.host}/v2/{self.endpoint.repository}"
            if response.status == 401:
                self._challenge = _parse_challenge(response.headers.get("WWW-Authenticate", ""))
            elif response.status != 200 and response.status != 404:
                error = _status_error(response.status)
                raise error(f"registry {self.endpoint.host}: /v2/ answered "
                            f"HTTP {response.status}")
            return
        raise RegistryUnavailable("; ".join(errors))

    def _authorize(self, force: bool = False) -> str | None:
        with self._auth_lock:
            if self._challenge is None:
                return None
            scheme, params = self._challenge
            if scheme == "basic":
                if not self.credentials:
                    raise Unauthenticated(f"{self.what}: the registry asks for credentials "
                                          "(HTTP 401) and none were given")
                return "Basic " + _basic(self.credentials)
            if scheme != "bearer":
                raise Unsupported(f"{self.what}: unsupported auth scheme {scheme!r}")
            if force or self._authorization is None or time.monotonic() >= self._token_expires:
                self._fetch_token(params)
            return self._authorization

    def _fetch_token(self, params: dict) -> None:
        realm = params.get("realm")
        if not realm or not realm.startswith(("https://", "http://")):
            raise RegistryFailed(f"{self.what}: Bearer challenge without a usable realm")
        query = {"scope": f"repository:{self.endpoint.repository}:pull"}
        if params.get("service"):
            query["service"] = params["service"]
        headers = {}
        if self.credentials:
            headers["Authorization"] = "Basic " + _basic(self.credentials)
            query["account"] = self.credentials[0]
        url = realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(query)
        response = self._send("GET", url, headers=headers, authorize=False)
        body = _read_bounded(response, 1 << 20, f"token from {realm}")
        if response.status in (401, 403):
            error = Unauthenticated if response.status == 401 else PermissionDenied
            raise error(f"{self.what}: token server {realm} refused the "
                        f"{'credentials' if self.credentials else 'anonymous request'} "
                        f"(HTTP {response.status})")
        if response.status != 200:
            error = RegistryUnavailable if response.status in RETRYABLE_STATUS \
                else RegistryFailed
            raise error(f"{self.what}: token server {realm} answered HTTP {response.status}")
        try:
            document = json.loads(body)
            token = document.get("token") or document.get("access_token")
            expires_in = float(document.get("expires_in") or 60)
        except (ValueError, AttributeError, TypeError):
            token = None
        if not isinstance(token, str) or not token:
            raise RegistryFailed(f"{self.what}: token server {realm} sent no token")
        self._authorization = "Bearer " + token
        # Refresh a little early: a token that expires in flight costs a failed request.
        self._token_expires = time.monotonic() + max(expires_in - 10, expires_in / 2)

    # --- requests -------------------------------------------------------------------------------
    def _send(self, method: str, url: str, *, headers: dict | None = None,
              authorize: bool = True, retry: RetryPolicy | None = None):
        """One request with retries for what may pass; 401 once re-authorizes."""
        headers = dict(headers or {})
        verify = url.startswith("https://") and not self.endpoint.insecure
        pool = self.transport.pool(self.endpoint, verify)
        reauthorized = False
        delays = (retry or self.retry).delays()
        while True:
            if authorize:
                authorization = self._authorize()
                if authorization:
                    headers["Authorization"] = authorization
            try:
                response = pool.request(method, url, headers=headers, preload_content=False,
                                        decode_content=False, redirect=True)
            except TransportError as e:
                delay = None if _is_tls_failure(e) else next(delays, None)
                if delay is None:
                    raise RegistryUnavailable(f"{self.endpoint.host}: {_reason(e)}"
                                              f"{self._tls_hint(e)}") from None
                time.sleep(delay)
                continue
            if response.status == 401 and authorize and not reauthorized and \
                    self._challenge is not None:
                response.drain_conn()
                self._challenge = _parse_challenge(response.headers.get("WWW-Authenticate", "")) \
                    or self._challenge
                self._authorize(force=True)
                reauthorized = True
                continue
            if response.status in RETRYABLE_STATUS:
                delay = next(delays, None)
                if delay is not None:
                    response.drain_conn()
                    time.sleep(_retry_after(response, delay))
                    continue
            return response

    def _tls_hint(self, error: Exception) -> str:
        """What to do about a TLS failure, when the error says enough to tell."""
        text = str(getattr(error, "reason", None) or error)
        if "BAD_CERTIFICATE" in text or "CERTIFICATE_REQUIRED" in text:
            if not self.endpoint.client_cert:
                return (f" (the registry wants a client certificate: put client.cert and "
                        f"client.key in certs.d/{self.endpoint.host}/)")
        elif "CERTIFICATE_VERIFY_FAILED" in text and not self.endpoint.ca_files:
            return (f" (trust its CA with certs.d/{self.endpoint.host}/ca.crt, or mark it "
                    "insecure in registries.conf)")
        return ""

    def _check(self, response, what: str) -> None:
        if response.status == 200 or response.status == 206:
            return
        detail = _error_detail(response)
        response.drain_conn()
        if response.status == 401:
            raise Unauthenticated(f"{self.what}: {what}: unauthorized (HTTP 401)"
                                + ("" if self.credentials else "; no credentials were given")
                                + detail)
        if response.status == 404:
            raise NotFound(f"{self.what}: {what}: not found (HTTP 404){detail}")
        raise _status_error(response.status)(f"{self.what}: {what}: HTTP {response.status}"
                            f"{detail}")

    # --- manifests ------------------------------------------------------------------------------
    def manifest(self, reference: str, expected_digest: str | None = None
                 ) -> tuple[bytes, str, str]:
        """(body, media type, digest) of a manifest or index, digest checked."""
        response = self._send("GET", f"{self.base_url}/manifests/{reference}",
                              headers={"Accept": MANIFEST_ACCEPT})
        self._check(response, f"manifest {reference}")
        declared = response.headers.get("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > MANIFEST_MAX:
            response.drain_conn()
            raise ContentInvalid(f"{self.what}: manifest {reference} is {declared} bytes, more "
                                 f"than the {MANIFEST_MAX} allowed")
        body = _read_bounded(response, MANIFEST_MAX, f"{self.what}: manifest {reference}")
        digest = sha256_digest(body)
        if expected_digest and digest != expected_digest:
            raise DigestMismatch(f"{self.what}: manifest {expected_digest} has digest {digest}")
        header_digest = response.headers.get("Docker-Content-Digest")
        if header_digest and header_digest.startswith("sha256:") and header_digest != digest:
            raise DigestMismatch(f"{self.what}: manifest {reference}: the registry says "
                                 f"{header_digest} but the content has digest {digest}")
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        return body, media_type, digest

    # --- blobs ----------------------------------------------------------------------------------
    def fetch_blob(self, writer: BlobWriter, progress=None) -> None:
        """Stream a blob into `writer` (which verifies it), resuming with Range after a drop."""
        digest = writer.digest
        url = f"{self.base_url}/blobs/{digest}"
        delays = self.retry.delays()
        furthest = 0  # a try that gets further than any before earns a fresh set of retries
        while True:
            headers = {"Range": f"bytes={writer.offset}-"} if writer.offset else {}
            response = self._send("GET", url, headers=headers)
            if response.status == 416 and writer.offset and writer.offset == writer.size:
                response.drain_conn()
                return
            self._check(response, f"blob {digest}")
            if writer.offset and response.status == 200:
                writer.reset()  # the server ignored Range: start over
            try:
                for chunk in response.stream(_CHUNK, decode_content=False):
                    writer.write(chunk)
                    if progress is not None:
                        progress(writer.offset)
                if writer.size is None or writer.offset >= writer.size:
                    return
                error = f"connection closed after {writer.offset} of {writer.size} bytes"
            except DigestMismatch:
                response.drain_conn()
                raise
            except TransportError as e:
                error = _reason(e)
            finally:
                response.release_conn()
            if writer.offset > furthest:
                furthest = writer.offset
                delays = self.retry.delays()
            delay = next(delays, None)
            if delay is None:
                raise RegistryUnavailable(f"{self.what}: blob {digest}: {error}; gave up after "
                                          f"{self.retry.attempts} attempts without progress")
            time.sleep(delay)

    def read_blob(self, digest: str, size: int, limit: int) -> bytes:
        """A small blob (an image config) in memory, size-bounded; the caller checks the digest."""
        if size > limit:
            raise ContentInvalid(f"{self.what}: blob {digest} declares {size} bytes, more than "
                                 f"the {limit} allowed for it")
        response = self._send("GET", f"{self.base_url}/blobs/{digest}")
        self._check(response, f"blob {digest}")
        return _read_bounded(response, limit, f"{self.what}: blob {digest}")


def _read_bounded(response, limit: int, what: str) -> bytes:
    chunks, total = [], 0
    try:
        for chunk in response.stream(64 << 10, decode_content=True):
            total += len(chunk)
            if total > limit:
                raise ContentInvalid(f"{what}: more than {limit} bytes")
            chunks.append(chunk)
    except TransportError as e:
        raise RegistryUnavailable(f"{what}: {_reason(e)}") from None
    finally:
        response.release_conn()
    return b"".join(chunks)


def _status_error(status: int) -> type[ImageError]:
    """The error for a registry's HTTP status (a retryable one: still failing after retries)."""
    if status == 401:
        return Unauthenticated
    if status == 403:
        return PermissionDenied
    if status == 404:
        return NotFound
    return RegistryUnavailable if status in RETRYABLE_STATUS else RegistryFailed


def _parse_challenge(header: str) -> tuple[str, dict] | None:
    """`Bearer realm="…",service="…",scope="…"` → ("bearer", {...})."""
    scheme, _, rest = header.strip().partition(" ")
    if not scheme:
        return None
    params, rest = {}, rest.strip()
    while rest:
        key, eq, rest = rest.partition("=")
        if not eq:
            break
        rest = rest.lstrip()
        if rest.startswith('"'):
            end = 1
            value = []
            while end < len(rest) and rest[end] != '"':
                if rest[end] == "\\" and end + 1 < len(rest):
                    end += 1
                value.append(rest[end])
                end += 1
            params[key.strip().lower()] = "".join(value)
            rest = rest[end + 1:]
        else:
            value, _, rest = rest.partition(",")
            params[key.strip().lower()] = value.strip()
        rest = rest.lstrip().removeprefix(",").lstrip()
    return scheme.lower(), params


def _basic(credentials: tuple[str, str]) -> str:
    return base64.b64encode(f"{credentials[0]}:{credentials[1]}".encode()).decode()


def _retry_after(response, default: float) -> float:
    value = response.headers.get("Retry-After", "")
    return min(float(value), 30.0) if value.isdigit() else default


def _error_detail(response) -> str:
    """The registry's own error message (distribution's {"errors": [...]}), if it sent one."""
    try:
        body = response.read(64 << 10, decode_content=True)
        errors = json.loads(body).get("errors") or []
        messages = [f"{e.get('code', '')}: {e.get('message', '')}".strip(": ") for e in errors]
        return f" ({'; '.join(messages)})" if messages else ""
    except (ValueError, AttributeError, TypeError, TransportError):
        return ""


def _is_tls_failure(error: Exception) -> bool:
    """A TLS failure does not pass with time; retrying it only delays the next scheme."""
    return isinstance(error, SSLError) or isinstance(getattr(error, "reason", None), SSLError)


def _reason(error: Exception) -> str:
    text = str(getattr(error, "reason", None) or error)
    if text.startswith(("HTTPConnection(", "HTTPSConnection(")):
        text = text.split("): ", 1)[-1]  # urllib3 names the pool object first
    return text
