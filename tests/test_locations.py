"""Locations: local paths and URIs resolve, join, list, read and write the same way."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.locations import (
    absolute,
    is_dir,
    is_file,
    join_uri,
    list_names,
    list_tree,
    read_bytes,
    read_text,
    remove_dir,  # fmt: skip
    resolve,
    upload_dir,
    write_text,
)


def test_join_uri_keeps_options_and_escapes_parts():
    assert (
        join_uri("s3://b/x?endpoint_override=h:1&scheme=http", "P 1", "a?.png")
        == "s3://b/x/P%201/a%3F.png?endpoint_override=h:1&scheme=http"
    )
    assert join_uri("file:///tmp/x/", "cells") == "file:///tmp/x/cells"
    assert join_uri("relative/dir", "a b.png") == str(Path("relative/dir", "a b.png"))


def test_escaped_uri_resolves_to_the_named_file(tmp_path):
    (tmp_path / "P 1").mkdir()
    (tmp_path / "P 1" / "a?#%.png").write_bytes(b"pixels")
    uri = join_uri(tmp_path.as_uri(), "P 1", "a?#%.png")
    assert resolve(uri)[1] == str(tmp_path / "P 1" / "a?#%.png")
    assert read_bytes(uri) == b"pixels" and is_file(uri) and not is_dir(uri)


def test_absolute_keeps_uris_and_anchors_local_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert absolute("s3://b/x?scheme=http") == "s3://b/x?scheme=http"
    assert absolute("cells") == str(tmp_path / "cells")
    assert absolute("~/x") == str(Path.home() / "x")


@pytest.mark.parametrize("as_uri", [False, True], ids=["path", "file-uri"])
def test_write_list_read_remove(tmp_path, as_uri):
    root = tmp_path.as_uri() if as_uri else str(tmp_path)
    write_text(join_uri(root, "run", "a", "meta.json"), "{}")
    write_text(join_uri(root, "run", "b.txt"), "héllo")
    assert list_tree(join_uri(root, "run")) == (["a/meta.json", "b.txt"], ["a"])
    assert list_names(join_uri(root, "run")) == ["a", "b.txt"] and list_names(join_uri(root, "none")) == []
    assert read_text(join_uri(root, "run", "b.txt")) == "héllo"
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]  # written atomically, nothing left over
    remove_dir(join_uri(root, "run", "a"))
    remove_dir(join_uri(root, "run", "never-there"))
    assert list_names(join_uri(root, "run")) == ["b.txt"]


def test_upload_dir_skips_named_files(tmp_path):
    src = tmp_path / "ckpt"
    (src / "sub").mkdir(parents=True)
    for name in ("model.pt", "optimizer.pt", "sub/x.json"):
        (src / name).write_bytes(name.encode())
    dest = join_uri(tmp_path.as_uri(), "best")
    upload_dir(src, dest, skip=("optimizer.pt",))
    assert list_tree(dest) == (["model.pt", "sub/x.json"], ["sub"])
    assert read_bytes(join_uri(dest, "sub", "x.json")) == b"sub/x.json"


def test_s3_round_trip(s3_bucket):
    uri = join_uri(s3_bucket, "locations", "x y.txt")
    write_text(uri, "on s3")
    assert read_text(uri) == "on s3" and is_file(uri) and is_dir(join_uri(s3_bucket, "locations"))
    assert list_tree(join_uri(s3_bucket, "locations"))[0] == ["x y.txt"]


@pytest.mark.parametrize("where", ["file-uri", "s3"])
def test_checkpoint_loads_from_a_uri(tmp_path, request, where):
    """A checkpoint saved locally, read back through a URI: same weights, same model identity."""
    import torch

    from pipeline.checkpoint import CheckpointError, CheckpointMeta, load_checkpoint, save_checkpoint
    from pipeline.classify import model_identity
    from pipeline.config import CropSettings
    from pipeline.models import build_model

    model = build_model("lenet", 126)
    meta = CheckpointMeta(arch="lenet", model_name="lenet", image_size=126, mean=(0.5,) * 3, std=(0.5,) * 3,
                          crop_settings=CropSettings())  # fmt: skip
    save_checkpoint(tmp_path / "ckpt", model.state_dict(), meta, optimizer_state={"state": {}})
    if where == "s3":
        uri = join_uri(request.getfixturevalue("s3_bucket"), "checkpoints", "lenet best")
        upload_dir(tmp_path / "ckpt", uri)
    else:
        uri = (tmp_path / "ckpt").as_uri()
    loaded, loaded_meta = load_checkpoint(uri)
    assert loaded_meta == meta
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert model_identity(uri, loaded_meta) == model_identity(tmp_path / "ckpt", loaded_meta)
    with pytest.raises(CheckpointError, match="meta.json is missing"):
        load_checkpoint(join_uri(uri, "nothing here"))


def test_bucket_uris_resolve_like_pyarrow_with_one_filesystem_per_bucket(s3_bucket):
    import pyarrow.fs as pafs

    uris = [join_uri(s3_bucket, "a", "b c?.png"), join_uri(s3_bucket, "dir"), s3_bucket,
            join_uri(s3_bucket, "x%y", "é.txt")]  # fmt: skip
    for uri in uris:
        assert resolve(uri)[1] == pafs.FileSystem.from_uri(uri)[1], uri
    assert resolve(uris[0])[0] is resolve(uris[1])[0]  # made once, not per file
    write_text(uris[3], "ok")
    assert read_text(uris[3]) == "ok"


SECRET = "sEcReT+value/9"  # '+' and '/' as in real AWS secret keys: %-escaped in the URI


def with_credentials(bucket_uri: str, key: str = "AKIAKEYID", secret: str = SECRET) -> str:
    """`s3://KEY:SECRET@bucket?...`: pyarrow's form for credentials in the URI."""
    from urllib.parse import quote

    return bucket_uri.replace("s3://", f"s3://{key}:{quote(secret, safe='')}@", 1)


def test_credentials_in_a_bucket_uri_are_not_part_of_the_path(s3_bucket):
    """s3://KEY:SECRET@bucket/x is bucket/x on a filesystem holding KEY and SECRET (it was 'KEY:SECRET@bucket/x')."""
    from urllib.parse import quote

    secret_uri = join_uri(with_credentials(s3_bucket), "creds", "a b.txt")
    _, path = resolve(secret_uri)
    assert path == "allray-test/creds/a b.txt"
    write_text(secret_uri, "written with credentials from the URI")
    assert read_text(join_uri(s3_bucket, "creds", "a b.txt")) == "written with credentials from the URI"
    assert list_tree(join_uri(s3_bucket, "creds"))[0] == ["a b.txt"]
    with pytest.raises(OSError) as err:
        read_text(join_uri(with_credentials(s3_bucket), "creds", "missing.txt"))
    for secret in (SECRET, quote(SECRET, safe=""), "AKIAKEYID"):
        assert secret not in str(err.value)


def test_a_bad_uri_error_does_not_repeat_its_credentials():
    with pytest.raises((OSError, ValueError)) as err:
        resolve("nosuchscheme://AKIAKEYID:hunter2@host/x")
    assert "hunter2" not in str(err.value) and "AKIAKEYID" not in str(err.value)
