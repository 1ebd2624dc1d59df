"""`corral pull | images | rmi | tag | image …`: images, through corrald or on a data root.

`pull`, `images` and `rmi` speak CRI to corrald when it runs (or `--socket`
is given), as kubelet would, so corrald sees every change; with `--root DIR`
(or $CORRAL_ROOT), or no corrald running, they work directly on the data
root (default /var/lib/corral).  The rest (tag, inspect, import, export,
prune, build) has no CRI call and always works on the data root, which
corrald shares safely (SQLite WAL, the GC lock).
"""

from __future__ import annotations

import json
import os
import sys
import time

DEFAULT_ROOT = "/var/lib/corral"


def add_commands(subparsers) -> None:
    pull = subparsers.add_parser("pull", help="pull an image from a registry and unpack it")
    pull.add_argument("--platform", help="os/arch[/variant] (default: this machine's)")
    pull.add_argument("--creds", metavar="USER:PASSWORD")
    pull.add_argument("-q", "--quiet", action="store_true")
    pull.add_argument("image")
    pull.set_defaults(func=cmd_pull)

    images = subparsers.add_parser("images", help="list images")
    _images_options(images)

    rmi = subparsers.add_parser("rmi", help="remove images")
    rmi.add_argument("-f", "--force", action="store_true")
    rmi.add_argument("images", nargs="+", metavar="IMAGE")
    rmi.set_defaults(func=cmd_rmi)

    tag = subparsers.add_parser("tag", help="give an image another name")
    tag.add_argument("source")
    tag.add_argument("target")
    tag.set_defaults(func=cmd_tag)

    image = subparsers.add_parser("image", help="manage images")
    sub = image.add_subparsers(dest="image_command", required=True, metavar="COMMAND")
    _images_options(sub.add_parser("ls", help="list images"))
    inspect = sub.add_parser("inspect", help="an image's record, config and manifest as JSON")
    inspect.add_argument("images", nargs="+", metavar="IMAGE")
    inspect.set_defaults(func=cmd_inspect)
    rm = sub.add_parser("rm", help="remove images")
    rm.add_argument("-f", "--force", action="store_true")
    rm.add_argument("images", nargs="+", metavar="IMAGE")
    rm.set_defaults(func=cmd_rmi)
    image_pull = sub.add_parser("pull", help="pull an image")
    image_pull.add_argument("--platform")
    image_pull.add_argument("--creds", metavar="USER:PASSWORD")
    image_pull.add_argument("-q", "--quiet", action="store_true")
    image_pull.add_argument("image")
    image_pull.set_defaults(func=cmd_pull)
    imp = sub.add_parser("import", help="import an oci-archive, OCI layout dir or docker-save tar")
    imp.add_argument("source")
    imp.add_argument("name", nargs="?")
    imp.set_defaults(func=cmd_import)
    export = sub.add_parser("export", help="write images to an archive or OCI layout dir")
    export.add_argument("--format", choices=("oci-archive", "oci-dir", "docker-archive"),
                        default="oci-archive")
    export.add_argument("-o", "--output", required=True, metavar="DEST")
    export.add_argument("images", nargs="+", metavar="IMAGE")
    export.set_defaults(func=cmd_export)
    prune = sub.add_parser("prune", help="remove blobs and layers no image or container uses")
    prune.add_argument("-a", "--all", action="store_true",
                       help="first remove every image no container uses")
    prune.set_defaults(func=cmd_prune)
    build = sub.add_parser("build", help="make an image from a root filesystem directory")
    build.add_argument("rootfs")
    build.add_argument("name")
    build.add_argument("--cmd", nargs="+")
    build.set_defaults(func=cmd_build)


def _images_options(parser) -> None:
    parser.add_argument("-q", "--quiet", action="store_true", help="image IDs only")
    parser.add_argument("--format", choices=("table", "json"), default="table")
    parser.add_argument("--digests", action="store_true")
    parser.set_defaults(func=cmd_images)


def _service(opts):
    from corral.images.service import ImageService

    return ImageService(opts.root or os.environ.get("CORRAL_ROOT") or DEFAULT_ROOT)


def _registries(opts):
    from corral.images.registries import RegistryConfig

    def first(*paths):
        return next((p for p in paths if p and os.path.exists(p)), None)

    return RegistryConfig.load(
        registries_conf=opts.registries_conf or first("/etc/containers/registries.conf"),
        auth_file=opts.auth_file or first(os.environ.get("REGISTRY_AUTH_FILE"),
                                          "/run/containers/0/auth.json",
                                          os.path.expanduser("~/.docker/config.json")),
        certs_dir=opts.certs_dir or "/etc/containers/certs.d")


def _corrald(opts):
    """A CRI client when the command should go through corrald, else None."""
    from corral.cli.pods import DEFAULT_SOCKET, Cri

    if opts.root or os.environ.get("CORRAL_ROOT"):
        return None
    if opts.socket:
        return Cri(opts.socket)
    if not os.path.exists(DEFAULT_SOCKET):
        return None
    cri = Cri(DEFAULT_SOCKET)
    try:  # a socket file a killed corrald left behind is no corrald
        cri.grpc.channel_ready_future(cri.channel).result(timeout=1)
    except cri.grpc.FutureTimeoutError:
        cri.close()
        return None
    return cri


def _credentials(opts) -> tuple[str, str] | None:
    if not opts.creds:
        return None
    user, sep, password = opts.creds.partition(":")
    if not sep:
        raise ValueError("--creds: expected USER:PASSWORD")
    return user, password


# --- pull ----------------------------------------------------------------------------------
def cmd_pull(opts) -> int:
    from corral.images.pull import Puller

    credentials = _credentials(opts)
    cri = _corrald(opts)
    if cri is not None:
        if opts.platform:
            raise ValueError("--platform: corrald pulls for its own platform; use --root")
        auth = cri.pb.AuthConfig(username=credentials[0], password=credentials[1]) \
            if credentials else None
        if not opts.quiet:
            print(f"pulling {opts.image} through corrald ...", file=sys.stderr)
        reply = cri.call(cri.images.PullImage, cri.pb.PullImageRequest(
            image=cri.pb.ImageSpec(image=opts.image), auth=auth))
        print(reply.image_ref)
        return 0
    service = _service(opts)
    puller = Puller(service, _registries(opts))
    show = not opts.quiet and sys.stderr.isatty()
    try:
        if show:
            record = _pull_with_bars(puller, opts, credentials)
        else:
            record = puller.pull(opts.image, platform=opts.platform, credentials=credentials,
                                 unpack=True)
        service.unpack_new(record.name)  # already done while downloading: a check
    finally:
        puller.close()
        service.close()
    if not opts.quiet:
        print(f"{record.name}: {record.platform}", file=sys.stderr)
    print(record.id)
    return 0


def _pull_with_bars(puller, opts, credentials):
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TransferSpeedColumn,
    )

    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), TextColumn("{task.fields[status]}"),
                  transient=False) as progress:
        tasks: dict[str, int] = {}

        def update(layer) -> None:
            if layer.digest not in tasks:
                tasks[layer.digest] = progress.add_task(layer.digest[7:19], total=layer.total,
                                                        status=layer.status)
            progress.update(tasks[layer.digest], completed=layer.done, status=layer.status)

        return puller.pull(opts.image, platform=opts.platform, credentials=credentials,
                           progress=update, unpack=True)


# --- list, inspect, remove ------------------------------------------------------------------
def human_size(size: int) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.3g}{unit}" if unit != "B" else f"{size}B"
        size /= 1000
    return ""


def ago(timestamp: float) -> str:
    seconds = max(0.0, time.time() - timestamp)
    for unit, length in (("year", 31536000), ("month", 2592000), ("week", 604800),
                         ("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= length:
            count = int(seconds // length)
            return f"{count} {unit}{'s' if count > 1 else ''} ago"
    return "less than a minute ago"


def _split_name(name: str) -> tuple[str, str]:
    from corral.images.reference import parse

    ref = parse(name)
    return ref.familiar.split("@")[0].rsplit(":", 1)[0] if ref.tag else ref.familiar, \
        ref.tag or "<none>"


def _records_from_corrald(cri) -> list:
    """ImageRecord-like rows from CRI ListImages (which knows no creation time)."""
    from corral.images.service import ImageRecord

    records = []
    for image in cri.call(cri.images.ListImages, cri.pb.ListImagesRequest()).images:
        digest = image.repo_digests[0].split("@", 1)[1] if image.repo_digests else ""
        for tag in image.repo_tags:
            records.append(ImageRecord(tag, digest, image.id, image.size, 0, digest))
    return records


def cmd_images(opts) -> int:
    cri = _corrald(opts)
    if cri is not None:
        records = _records_from_corrald(cri)
    else:
        service = _service(opts)
        try:
            records = service.list()
        finally:
            service.close()
    if opts.quiet:
        seen = []
        for record in records:
            if record.id not in seen:
                seen.append(record.id)
                print(record.id[7:19])
        return 0
    if opts.format == "json":
        print(json.dumps([{"name": r.name, "id": r.id, "digest": r.target_digest,
                           "repoDigest": r.repo_digest, "platform": r.platform,
                           "size": r.size, "created": r.created} for r in records], indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False)
    headers = ["REPOSITORY", "TAG"] + (["DIGEST"] if opts.digests else []) + \
        ["IMAGE ID", "SIZE", "CREATED"]
    for header in headers:
        table.add_column(header, no_wrap=True)
    for record in records:
        repository, tag = _split_name(record.name)
        row = [repository, tag] + ([record.target_digest] if opts.digests else []) + \
            [record.id[7:19], human_size(record.size),
             ago(record.created) if record.created else "-"]
        table.add_row(*row)
    Console(width=None if sys.stdout.isatty() else 250).print(table)
    return 0


def cmd_inspect(opts) -> int:
    service = _service(opts)
    try:
        documents = []
        for name in opts.images:
            record = service.get(name)
            documents.append({
                "Name": record.name, "Id": record.id, "RepoDigest": record.repo_digest,
                "Platform": record.platform, "Size": record.size,
                "Created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created)),
                "Config": json.loads(service.content.read(record.id)),
                "Manifest": json.loads(service.content.read(record.manifest_digest)),
            })
    finally:
        service.close()
    print(json.dumps(documents, indent=2))
    return 0


def cmd_rmi(opts) -> int:
    cri = _corrald(opts)
    if cri is not None:
        for name in opts.images:
            spec = cri.pb.ImageSpec(image=name)
            if not cri.call(cri.images.ImageStatus,
                            cri.pb.ImageStatusRequest(image=spec)).HasField("image"):
                raise ValueError(f"image {name!r} not found")
            cri.call(cri.images.RemoveImage, cri.pb.RemoveImageRequest(image=spec))
            print(f"Untagged: {name}")
        return 0
    service = _service(opts)
    try:
        for name in opts.images:
            for removed in service.remove(name, force=opts.force):
                print(f"Untagged: {removed}")
    finally:
        service.close()
    return 0


def cmd_tag(opts) -> int:
    service = _service(opts)
    try:
        service.tag(opts.source, opts.target)
    finally:
        service.close()
    return 0


def cmd_import(opts) -> int:
    service = _service(opts)
    try:
        for record in service.import_archive(opts.source, opts.name):
            print(f"{record.name} {record.id}")
    finally:
        service.close()
    return 0


def cmd_export(opts) -> int:
    service = _service(opts)
    try:
        service.export(opts.images, opts.output, opts.format)
    finally:
        service.close()
    return 0


def cmd_prune(opts) -> int:
    """On the data root even while corrald runs (the CRI has no prune), which is safe:
    collection holds the GC lock exclusively, and corrald's pulls and imports hold it
    shared until they record their image, so no blob a pull is about to name goes; and
    --all spares every image a container of corrald's uses, counting those it is still
    creating (their rows are written before their snapshots are made)."""
    service = _service(opts)
    try:
        report = service.prune(all=opts.all, on_wait=lambda: print(
            "waiting for a pull or import to finish ...", file=sys.stderr))
    finally:
        service.close()
    for image_id, names in report.removed_images.items():  # as `docker image prune -a`
        for name in names:
            print(f"Untagged: {name}")
        print(f"Deleted: {image_id}")
    print(f"removed {report.blobs} blobs and {report.snapshots} layers, "
          f"{human_size(report.bytes)} freed")
    return 0


def cmd_build(opts) -> int:
    service = _service(opts)
    try:
        record = service.build(opts.rootfs, opts.name, cmd=opts.cmd)
    finally:
        service.close()
    print(record.id)
    return 0
