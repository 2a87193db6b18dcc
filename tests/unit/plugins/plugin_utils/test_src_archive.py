"""The action plugin's archive of a src (plugin_utils._src, on the controller) unpacked by the module's side
(module_utils._provision_source) to the same tree, modes and items. Here rather than beside either: a
module_utils test may import only module_utils (ansible-test units runs it that way), and the round trip
needs the controller's half too."""
import os

from ansible_collections.homelab.onebox.plugins.module_utils import _provision_source as src
from ansible_collections.homelab.onebox.plugins.plugin_utils._src import archive
from unit.plugins.module_utils.test_provision_source import make_tree


def test_an_archive_of_the_plugin_unpacks_to_the_same_tree_and_modes(tmp_path):
    root = make_tree(tmp_path / "t")
    made = archive(str(root), str(tmp_path))
    local = src.unpack(made, str(tmp_path / "out"))
    assert src.list_tree(local)[0] == src.list_tree(str(root))[0]
    assert {k: (f.digest, f.mode) for k, f in src.list_tree(local)[1].items()} == \
        {k: (f.digest, f.mode) for k, f in src.list_tree(str(root))[1].items()}
    single = src.unpack(archive(str(root / "run.sh"), str(tmp_path)), str(tmp_path / "one"))
    assert open(single).read() == "#!/bin/sh\n" and os.stat(single).st_mode & 0o777 == 0o755


def test_unpack_archives_points_the_items_at_the_copies_and_removes_the_archives(tmp_path):
    root = make_tree(tmp_path / "t")
    made = archive(str(root), str(tmp_path))
    items = [{"path": "/srv/t", "src": "/controller/t"}, {"path": "/x", "content": "x"},
             {"path": "/y", "src": "/controller/other"}]
    local = src.unpack_archives({"/controller/t": made}, items, str(tmp_path / "tmp"))
    assert items[0]["src"] == local["/controller/t"] and os.path.isdir(items[0]["src"])
    assert items[2]["src"] == "/controller/other" and not os.path.exists(made)
