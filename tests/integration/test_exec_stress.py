"""exec through _lxd.py under load, against whichever daemon the run targets (ONEBOX_TEST_DAEMON):
1,000 commands from 16 threads at once in one container, every one's exit code, stdout and stderr
its own (none lost, none swapped), and no output record left on the host afterwards (LXD keeps
them under the instance's logs/, Incus under logs/exec-output/: the client reads and deletes them at
the paths each operation gives).
"""
import time
from concurrent.futures import ThreadPoolExecutor

IMAGE = "onebox-debian12"
EXECS = 1000
THREADS = 16


def records(lxd, name):
    """The exec records the daemon still keeps for the instance (both daemons' places)."""
    found = []
    for node in (lxd.api.instances[name].logs, lxd.api.instances[name].logs["exec-output"]):
        try:
            found += [path for path in lxd.metadata("get", node, "logs of %s" % name) or [] if "/exec_" in path]
        except Exception:  # pylint: disable=broad-except  # LXD has no logs/exec-output
            pass
    return found


def test_a_thousand_execs_from_sixteen_threads_lose_no_output(lxd, instance_names):
    name = instance_names("ex")
    lxd.create_instance({"name": name, "type": "container", "source": {"type": "image", "alias": IMAGE}})
    lxd.change_state(name, "start")
    deadline = time.monotonic() + 60
    while lxd.exec(name, ["true"], timeout=30).rc != 0:  # the first exec can race the container's start
        assert time.monotonic() < deadline
        time.sleep(0.2)
    lxd.close()

    def one(index):
        result = lxd.exec(name, ["sh", "-c", 'echo "out $1"; echo "err $1" >&2; exit $(($1 % 7))', "-", str(index)],
                          timeout=60)
        return index, result

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        results = list(pool.map(one, range(EXECS)))
    elapsed = time.monotonic() - started
    lost = [(index, result) for index, result in results
            if result != (index % 7, "out %d\n" % index, "err %d\n" % index)]
    assert not lost, "%d of %d execs came back wrong, e.g. %r" % (len(lost), EXECS, lost[:3])
    lxd.close()  # the records' deletions are awaited here
    assert records(lxd, name) == []
    print("%s: %d execs from %d threads in %.1f s (%.1f ms each on average), no output lost"
          % (lxd.daemon, EXECS, THREADS, elapsed, 1000.0 * elapsed / EXECS))
