"""A host file written whole with its mode, replaced, removed."""
import os
import stat

from ansible_collections.homelab.onebox.plugins.module_utils._host_files import write_host_file


class Module:
    def __init__(self):
        self.moves = []

    def atomic_move(self, src, dest):
        # The temporary file already has its final mode when it is moved into place.
        self.moves.append(stat.S_IMODE(os.stat(src).st_mode))
        os.replace(src, dest)


def test_written_with_its_mode_in_a_new_directory_then_replaced_then_removed(tmp_path):
    module, path = Module(), str(tmp_path / "secrets" / "s3.env")
    write_host_file(module, path, "KEY=1\n", 0o600, dir_mode=0o700)
    assert open(path).read() == "KEY=1\n" and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700 and module.moves == [0o600]
    write_host_file(module, path, "KEY=2\n", 0o600)
    assert open(path).read() == "KEY=2\n" and os.listdir(os.path.dirname(path)) == ["s3.env"]
    write_host_file(module, path, None, 0o600)
    assert not os.path.exists(path)
    write_host_file(module, path, None, 0o600)  # removing what is gone is nothing
