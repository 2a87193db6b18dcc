"""The box's progress file on the host: the count written whole at each container done (from many
threads), nothing without a directory or containers, removed at the end, and a directory that
cannot take it costs the converge nothing."""
import json
import os
import threading

from ansible_collections.homelab.onebox.plugins.module_utils._progress import PROGRESS_FILE, Progress, progress_path


def read(path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def test_the_path_is_in_the_tasks_temporary_directory_or_none():
    assert progress_path("/root/.ansible/tmp/ansible-tmp-1") == "/root/.ansible/tmp/ansible-tmp-1/" + PROGRESS_FILE
    assert progress_path(None) is None and progress_path("") is None


def test_each_container_done_is_written_whole_and_the_file_goes_at_the_end(tmp_path):
    path = progress_path(str(tmp_path))
    progress = Progress(path)
    progress.start(3)
    assert read(path) == {"done": 0, "total": 3}
    progress.done()
    progress.done(object())   # as a future's done-callback
    assert read(path) == {"done": 2, "total": 3}
    assert oct(os.stat(path).st_mode & 0o777) == "0o644"   # readable by the connection's user
    progress.close()
    assert os.listdir(tmp_path) == []


def test_threads_count_every_container(tmp_path):
    path = progress_path(str(tmp_path))
    progress = Progress(path)
    progress.start(64)

    def eight():
        for _count in range(8):
            progress.done()
    threads = [threading.Thread(target=eight) for _thread in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert read(path) == {"done": 64, "total": 64}
    assert sorted(os.listdir(tmp_path)) == [PROGRESS_FILE]   # no partial file left


def test_no_directory_or_no_containers_writes_nothing(tmp_path):
    progress = Progress(None)
    progress.start(2)
    progress.done()
    progress.close()
    assert progress.done_count == 1
    empty = Progress(progress_path(str(tmp_path)))
    empty.start(0)
    empty.close()
    assert os.listdir(tmp_path) == []


def test_a_directory_that_cannot_take_it_only_loses_the_progress(tmp_path):
    progress = Progress(str(tmp_path / "gone" / PROGRESS_FILE))
    progress.start(2)
    progress.done()
    progress.close()
    assert progress.path is None and progress.done_count == 1
