"""Where files live: local paths and URIs, resolved in one place, read and written through pyarrow.fs.

Every location allray reads or writes (slides, CSVs, ingest outputs, run and report folders,
checkpoints) may be a local path or any URI pyarrow.fs understands: s3://bucket/x, gs://bucket/x,
file:///mnt/shared/x, with options such as `?endpoint_override=host:port&scheme=http`. `resolve`
is the one place a location becomes (filesystem, path); the helpers below take locations, so the
code that uses them never builds a `Path` from a URI (which would mangle `s3://` into `s3:/`).
Credentials come from the filesystem's usual sources (environment, config files) or from the URI itself
(`s3://KEY:SECRET@bucket/x`, as pyarrow reads it); they are used here, never recorded (pipeline.redact).
"""

from __future__ import annotations

import functools
import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import pyarrow.fs as pafs

from pipeline.redact import redact, redact_text


def is_uri(location: str | Path) -> bool:
    """True for a URI (s3://bucket/x, gs://..., file:///...), False for a local path."""
    return "://" in str(location)


BUCKET_SCHEMES = ("s3", "gs", "gcs")


@functools.lru_cache(maxsize=64)
def _bucket_filesystem(scheme: str, bucket: str, options: str) -> pafs.FileSystem:
    """One filesystem per bucket and options, made once per process: making an S3 filesystem for a
    URI without a region asks S3 for the bucket's region, which per file read would double the requests."""
    uri = f"{scheme}://{bucket}/" + (f"?{options}" if options else "")
    try:
        return pafs.FileSystem.from_uri(uri)[0]
    except (OSError, ValueError) as err:  # pyarrow's message repeats the URI, credentials included
        raise type(err)(redact_text(str(err))) from None


def resolve(uri: str | Path) -> tuple[pafs.FileSystem, str]:
    """The filesystem and path for a local path or a URI (s3://bucket/x, gs://..., file:///...)."""
    text = str(uri)
    if is_uri(text):
        parts = urlsplit(text)
        if parts.scheme in BUCKET_SCHEMES and parts.netloc:
            # s3://KEY:SECRET@bucket/x (pyarrow's form for credentials in the URI): the bucket is what
            # follows the '@'; the user info goes to the filesystem, never into the path.
            userinfo, at, bucket = parts.netloc.rpartition("@")
            path = (bucket + unquote(parts.path)).rstrip("/")
            return _bucket_filesystem(parts.scheme, userinfo + at + bucket, parts.query), path
        try:
            return pafs.FileSystem.from_uri(text)
        except (OSError, ValueError) as err:  # pyarrow's message repeats the URI, credentials included
            raise type(err)(redact_text(str(err))) from None
    return pafs.LocalFileSystem(), str(Path(text).expanduser().resolve())


def join(base: str, *parts: str) -> str:
    """`base/part/...` for a path as returned by `resolve` (always '/'-separated)."""
    return "/".join([base.rstrip("/"), *parts])


def absolute(location: str | Path) -> str:
    """A location as recorded and handed to Ray workers: a URI as given, a local path made absolute.

    Workers may run in another folder or on another node, where a relative path means something else.
    """
    return str(location) if is_uri(location) else str(Path(location).expanduser().resolve())


def join_uri(location: str | Path, *parts: str) -> str:
    """`location/part/...` for a local path or a URI.

    A URI keeps its options (`?endpoint_override=...`) after the joined path, and the parts are
    %-escaped, since pyarrow decodes the path of a URI (an image may be named `a b?.png`).
    """
    text = str(location)
    if not is_uri(text):
        return str(Path(text, *parts))
    base, mark, options = text.partition("?")
    escaped = [quote(part, safe="/") for part in parts]
    return "/".join([base.rstrip("/"), *escaped]) + mark + options


def file_type(location: str | Path) -> pafs.FileType:
    """What is at `location`: FileType.File, Directory or NotFound."""
    fs, path = resolve(location)
    return fs.get_file_info(path).type


def is_dir(location: str | Path) -> bool:
    """True when `location` is a folder (on object stores: a prefix that holds something)."""
    return file_type(location) == pafs.FileType.Directory


def is_file(location: str | Path) -> bool:
    """True when `location` is a file."""
    return file_type(location) == pafs.FileType.File


def list_names(location: str | Path) -> list[str]:
    """Sorted names of what a folder holds (files and folders, not recursive); [] when it is missing."""
    fs, path = resolve(location)
    return sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)))


@dataclass(frozen=True)
class Tree:
    """What a folder holds, recursively, as '/'-separated paths relative to it."""

    files: list[str]
    folders: list[str]
    links_not_followed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


def _by_parts(rel: str) -> list[str]:
    return rel.split("/")


def _walk_local(root: str, follow_links: bool) -> Tree:
    """os.walk's rule on a local folder: links to folders are not entered unless `follow_links`
    (and then no folder twice, so loops end), links to files outside `root` are not listed unless
    `follow_links`; every link left out is named with its reason."""
    real_root = os.path.realpath(root)
    files: list[str] = []
    folders: list[str] = []
    links: list[tuple[str, str]] = []
    entered = {real_root}

    def inside(real: str) -> bool:
        return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)

    def visit(folder: str, prefix: str) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            rel = prefix + entry.name
            if entry.is_symlink():
                target = os.path.realpath(entry.path)
                if not os.path.exists(target):
                    links.append((rel, "broken link: its target does not exist"))
                elif os.path.isdir(target):
                    if not follow_links:
                        links.append((rel, "link to a folder: not followed (--follow-links to follow it)"))
                    elif target in entered:
                        links.append((rel, "link to a folder already listed (a loop, or a second name for it): "
                                           "not followed again"))  # fmt: skip
                    else:
                        entered.add(target)
                        folders.append(rel)
                        visit(entry.path, rel + "/")
                elif not follow_links and not inside(target):
                    links.append((rel, "link to a file outside the source folder: not read (--follow-links to "
                                       "read it)"))  # fmt: skip
                elif os.path.isfile(target):
                    files.append(rel)
                else:
                    links.append((rel, "link to something that is not a regular file: not read"))
            elif entry.is_dir(follow_symlinks=False):
                entered.add(os.path.realpath(entry.path))
                folders.append(rel)
                visit(entry.path, rel + "/")
            elif entry.is_file(follow_symlinks=False):
                files.append(rel)

    visit(root, "")
    return Tree(sorted(files, key=_by_parts), sorted(folders, key=_by_parts), sorted(links))


def walk_tree(location: str | Path, follow_links: bool = False) -> Tree:
    """Files and folders under a folder, recursively (see `Tree`), sorted folder by folder.

    Local folders follow os.walk's rule on links (see `_walk_local`); object stores have none."""
    fs, path = resolve(location)
    if isinstance(fs, pafs.LocalFileSystem):
        return _walk_local(path, follow_links)
    files, folders = _list_remote(fs, path)
    return Tree(files, folders)


def list_tree(location: str | Path) -> tuple[list[str], list[str]]:
    """(files, folders) under a folder, recursively, as '/'-separated paths relative to it, sorted
    folder by folder (the order of sorted(Path.rglob(...))); links to folders are not entered."""
    tree = walk_tree(location)
    return tree.files, tree.folders


def _list_remote(fs: pafs.FileSystem, path: str) -> tuple[list[str], list[str]]:
    root = path.rstrip("/") + "/"
    files, folders = [], []
    for info in fs.get_file_info(pafs.FileSelector(path, recursive=True)):
        if not info.path.startswith(root):
            continue
        rel = info.path[len(root) :].strip("/")
        if info.type == pafs.FileType.File:
            files.append(rel)
        elif info.type == pafs.FileType.Directory and rel:
            folders.append(rel)
    return sorted(files, key=_by_parts), sorted(folders, key=_by_parts)


def make_dir(location: str | Path) -> None:
    """Create a folder and its parents (nothing happens when it exists)."""
    fs, path = resolve(location)
    fs.create_dir(path, recursive=True)


def remove_dir(location: str | Path) -> None:
    """Delete a folder and everything in it; nothing happens when it is missing."""
    fs, path = resolve(location)
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        fs.delete_dir(path)


def read_bytes(location: str | Path) -> bytes:
    """All bytes of a file (local or URI); FileNotFoundError / OSError as pyarrow raises them."""
    fs, path = resolve(location)
    with fs.open_input_stream(path) as fh:
        return fh.readall()


def read_text(location: str | Path) -> str:
    """A UTF-8 text file (local or URI)."""
    return read_bytes(location).decode("utf-8")


def write_bytes(location: str | Path, data: bytes) -> None:
    """Write a file so that readers see either nothing or all of it (temporary name, then rename)."""
    fs, path = resolve(location)
    parent = path.rsplit("/", 1)[0]
    if parent:
        fs.create_dir(parent, recursive=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with fs.open_output_stream(tmp) as fh:
        fh.write(data)
    fs.move(tmp, path)


def write_text(location: str | Path, text: str) -> None:
    """Write a UTF-8 text file atomically (see `write_bytes`)."""
    write_bytes(location, text.encode("utf-8"))


def upload_dir(local_dir: str | Path, location: str | Path, skip: tuple[str, ...] = ()) -> None:
    """Copy the files of a local folder (recursively) to `location`, leaving out the names in `skip`."""
    fs, path = resolve(location)
    local = pafs.LocalFileSystem()
    for folder, _dirs, names in os.walk(local_dir):
        rel = Path(folder).relative_to(local_dir).as_posix()
        target = path if rel == "." else join(path, rel)
        fs.create_dir(target, recursive=True)
        for name in names:
            if name not in skip:
                pafs.copy_files(str(Path(folder, name)), join(target, name), source_filesystem=local,
                                destination_filesystem=fs)  # fmt: skip


def write_json(out: str | Path, name: str, payload: dict) -> None:
    """Write `payload` as indented JSON to out/name, atomically, with credentials redacted (see pipeline.redact):
    these are run records, summaries and metadata, which must never keep a secret from a URI or an option."""
    text = json.dumps(redact(json.loads(json.dumps(payload, default=str))), indent=2)
    write_text(join_uri(out, name), text + "\n")


def read_json(location: str | Path) -> dict:
    """A JSON file (local or URI)."""
    return json.loads(read_text(location))
