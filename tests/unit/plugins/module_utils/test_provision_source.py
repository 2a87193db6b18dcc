"""_provision_source: a src's files on the module's host (a tree listed, links followed once, hashed in
chunks and once a run) and the transferred archives unpacked (only what the action plugin makes)."""
import hashlib
import io
import os
import tarfile

import pytest

from ansible_collections.homelab.onebox.plugins.module_utils import _provision_source as src
from ansible_collections.homelab.onebox.plugins.module_utils._errors import OneboxError


def make_tree(root):
    (root / "a" / "b").mkdir(parents=True)
    (root / "top.txt").write_text("top\n")
    (root / "a" / "b" / "deep.txt").write_text("deep\n")
    (root / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(root / "run.sh", 0o755)
    return root


def test_file_digest_reads_in_chunks_and_once_for_an_unchanged_file(tmp_path, monkeypatch):
    path = tmp_path / "big"
    data = os.urandom(3 * src.CHUNK + 5)
    path.write_bytes(data)
    assert src.file_digest(str(path)) == hashlib.sha256(data).hexdigest()
    opened = []
    monkeypatch.setattr(src, "open", lambda *a: opened.append(a) or io.open(*a), raising=False)
    assert src.file_digest(str(path)) == hashlib.sha256(data).hexdigest() and opened == []
    path.write_bytes(b"other")                          # another size: read again
    assert src.file_digest(str(path)) == hashlib.sha256(b"other").hexdigest() and len(opened) == 1


def test_source_file_knows_its_size_mode_and_first_bytes(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(b"\x00\x01" * 10)
    os.chmod(path, 0o4750)
    source = src.SourceFile(str(path))
    assert (source.size, source.mode, source.head(3)) == (20, 0o750, b"\x00\x01\x00")


def test_list_tree_lists_directories_parents_first_and_regular_files(tmp_path):
    root = make_tree(tmp_path / "t")
    os.mkfifo(root / "a" / "fifo")                      # not a file to copy
    (root / "empty").mkdir()
    dirs, files = src.list_tree(str(root))
    assert dirs == ["a", "a/b", "empty"]
    assert sorted(files) == ["a/b/deep.txt", "run.sh", "top.txt"]
    assert files["run.sh"].mode == 0o755 and files["top.txt"].size == 4


def test_list_tree_follows_links_and_walks_a_loop_once(tmp_path):
    root = make_tree(tmp_path / "t")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "o.txt").write_text("o")
    (root / "linked").symlink_to(outside)
    (root / "a" / "loop").symlink_to(root / "a")
    (root / "file-link").symlink_to(root / "top.txt")
    (root / "dangling").symlink_to(tmp_path / "nothing")
    dirs, files = src.list_tree(str(root))
    assert "linked/o.txt" in files and "file-link" in files and "dangling" not in files
    assert not any(d.startswith("a/loop/") for d in dirs)


def test_list_tree_refuses_a_name_with_a_newline(tmp_path):
    root = make_tree(tmp_path / "t")
    (root / "a" / "bad\nname").write_text("x")
    with pytest.raises(OneboxError) as err:
        src.list_tree(str(root))
    assert "newline" in err.value.msg


@pytest.mark.parametrize("name, kind", [("src/../escape", tarfile.REGTYPE), ("/abs", tarfile.REGTYPE),
                                        ("other/x", tarfile.REGTYPE), ("src/link", tarfile.SYMTYPE)])
def test_unpack_refuses_what_the_plugin_never_puts_in(tmp_path, name, kind):
    path = tmp_path / "bad.tar"
    with tarfile.open(path, "w") as out:
        member = tarfile.TarInfo(name)
        member.type = kind
        member.linkname = "/etc/passwd" if kind == tarfile.SYMTYPE else ""
        out.addfile(member, io.BytesIO(b""))
    with pytest.raises(OneboxError) as err:
        src.unpack(str(path), str(tmp_path / "out"))
    assert "unexpected member" in err.value.msg
    assert not (tmp_path / "escape").exists()


def test_unpack_archives_names_the_source_of_a_broken_archive(tmp_path):
    broken = tmp_path / "broken.tar"
    broken.write_bytes(b"not a tar")
    with pytest.raises(OneboxError) as err:
        src.unpack_archives({"/controller/app.jar": str(broken)}, [], str(tmp_path))
    assert "/controller/app.jar" in err.value.msg
