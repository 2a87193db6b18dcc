"""The host's backup agent, its pure parts: the configuration checked, restic's answers read, the
runs a service can be restored from."""
import json

import pytest

from ansible_collections.homelab.onebox.plugins.module_utils import _backup_agent as ba

CONFIG = {"owner": "box", "socket": "/var/lib/lxd/unix.socket", "lock": "/run/lock/x", "targets": [{"name": "disk", "repository": "/r"}],
          "retention": {"last": 2}, "services": [{"name": "db", "containers": ["db"], "volumes": ["box-db-data"]}]}


def snap(service, run, kind, obj, time="2026-12-01T03:00:00Z", ident="abcdef0123"):
    return {"id": ident, "short_id": ident[:8], "time": time,
            "tags": ["onebox", "service=%s" % service, "run=%s" % run, "kind=%s" % kind, "object=%s" % obj]}


def test_a_good_configuration_has_no_problems_and_a_broken_one_says_each():
    assert ba.config_problems(CONFIG) == []
    broken = dict(CONFIG, owner="Box!", lock="relative", targets=[], retention={"daily": "7"}, services=[{"name": "x", "volumes": "v"}])
    problems = ba.config_problems(broken)
    assert len(problems) == 5 and any("owner" in p for p in problems) and any("retention" in p for p in problems)


def test_restic_errors_are_said_in_words_a_user_acts_on():
    assert ba.restic_error("Fatal: wrong password or no key found\n", 1).startswith("wrong password")
    missing = ba.restic_error("Fatal: unable to open config file: stat /r/config: no such file or directory\n"
                              "Is there a repository at the following location?\n/r\n", 1)
    assert missing.startswith("no repository there")
    assert ba.restic_error("a\nb\nc\nd\n", 3) == "restic exited 3: b | c | d"


def test_the_summary_line_gives_the_snapshot_and_what_it_added():
    out = '{"message_type":"status"}\n{"message_type":"summary","snapshot_id":"1234abcd","data_added":42,"total_bytes_processed":99}\n'
    assert ba.backup_summary(out) == {"snapshot": "1234abcd", "added": 42, "size": 99}


def test_runs_are_grouped_newest_first_and_a_partial_run_is_not_complete():
    snaps = [snap("db", "r1", "instance", "db", "2026-12-01T03:00:00Z", "aaaaaaaa11"),
             snap("db", "r1", "volume", "box-db-data", "2026-12-01T03:00:05Z", "bbbbbbbb22"),
             snap("db", "r2", "instance", "db", "2026-12-02T03:00:00Z", "cccccccc33"),
             snap("web", "r2", "instance", "web", "2026-12-02T03:00:00Z", "dddddddd44")]
    runs = ba.runs_of(snaps, "db")
    assert [r["run"] for r in runs] == ["r2", "r1"]
    assert runs[1]["objects"] == {"instance/db": "aaaaaaaa", "volume/box-db-data": "bbbbbbbb"}
    service = CONFIG["services"][0]
    assert not ba.complete(runs[0], service) and ba.complete(runs[1], service)


def test_status_gives_each_services_last_good_backup_and_its_age(tmp_path, capsys):
    config = dict(CONFIG, state_dir=str(tmp_path), log=str(tmp_path / "log"))
    (tmp_path / "last.json").write_text(json.dumps({"db": {"last_good_time": "2026-12-01T03:00:00Z", "ok": True, "objects": {}}}))
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    assert ba.main(["--config", str(path), "status"]) == 0
    answer = json.loads(capsys.readouterr().out)
    entry = answer["services"][0]
    assert entry["name"] == "db" and entry["ok"] and entry["age_seconds"] > 0 and "objects" not in entry


def test_a_broken_configuration_or_usage_exits_2_and_says_why(tmp_path, capsys):
    path = tmp_path / "config.json"
    path.write_text("{not json")
    assert ba.main(["--config", str(path), "status"]) == 2
    assert "is not JSON" in json.loads(capsys.readouterr().out)["error"]
    path.write_text(json.dumps(CONFIG))
    assert ba.main(["--config", str(path), "frobnicate"]) == 2
    assert "usage" in json.loads(capsys.readouterr().out)["error"]
    assert ba.main(["--config", str(path), "restore"]) == 2
    assert "SERVICE" in json.loads(capsys.readouterr().out)["error"]


def test_restore_refuses_an_object_without_the_owners_mark_before_any_change(monkeypatch):
    agent = ba.Agent(CONFIG)
    monkeypatch.setattr(agent, "restic", lambda target: type("Restic", (), {"name": "disk"})())
    monkeypatch.setattr(agent, "snapshots", lambda restic: [snap("db", "r1", "instance", "db", ident="aaaaaaaa11"),
                                                            snap("db", "r1", "volume", "box-db-data", ident="bbbbbbbb22")])
    monkeypatch.setattr(agent, "pool", lambda: "default")

    class Lxd:
        def find(self, path):  # the container is someone else's; the volume is gone
            return {"config": {"user.onebox.owner": "other"}} if path.startswith("/1.0/instances/") else None

        def call(self, *args, **kwargs):
            raise AssertionError("restore changed something: %r" % (args,))

    agent.lxd = Lxd()
    with pytest.raises(ba.Failure, match="instance/db exists and is not marked as box's"):
        agent.restore(["db"], overwrite=True)
    agent.check = True  # check mode says the same, before anything too
    with pytest.raises(ba.Failure, match="not marked as box's"):
        agent.restore(["db"], overwrite=True)


@pytest.mark.parametrize("socket_path, logs, daemon", [
    ("/var/lib/lxd/unix.socket", "/1.0/instances/db/logs/", "LXD"),
    ("/var/lib/incus/unix.socket", "/1.0/instances/db/logs/exec-output/", "Incus"),
])
def test_a_command_in_a_container_reads_then_deletes_its_records_where_the_daemon_put_them(socket_path, logs, daemon):
    import contextlib
    import io
    calls = []

    class Lxd(ba.Lxd):
        def call(self, method, path, body=None, headers=None, timeout=ba.OPERATION_TIMEOUT):
            calls.append((method, path))
            return {"metadata": {"return": 3, "output": {"1": logs + "exec_x.stdout", "2": logs + "exec_x.stderr"}}}

        @contextlib.contextmanager
        def stream(self, path):
            calls.append(("GET", path))
            yield io.BytesIO(path.rsplit(".", 1)[-1].encode())

        def request(self, method, path, body=None, headers=None, timeout=None):
            calls.append((method, path))
            raise ba.Failure("%s %s %s: gone" % (self.daemon, method, path))  # a failed deletion is not the run's

    lxd = Lxd(socket_path)
    assert lxd.daemon == daemon
    assert lxd.run("db", ["pg_dump"], 60) == (3, "stdout", "stderr")
    assert calls == [("POST", "/1.0/instances/db/exec"), ("GET", logs + "exec_x.stdout"), ("DELETE", logs + "exec_x.stdout"),
                     ("GET", logs + "exec_x.stderr"), ("DELETE", logs + "exec_x.stderr")]


def test_an_operation_past_its_timeout_fails_the_same_on_either_daemon():
    class Lxd(ba.Lxd):
        def request(self, method, path, body=None, headers=None, timeout=None):
            if path == "/1.0/instances":
                return {"type": "async", "operation": "/1.0/operations/o1"}
            if "/wait" in path:  # Incus: an error; LXD would answer the running operation
                raise ba.Failure("Incus GET %s: context deadline exceeded" % path)
            return {"metadata": {"status": "Running"}}

    with pytest.raises(ba.Failure, match="Incus POST /1.0/instances: timed out after 5 s"):
        Lxd("/var/lib/incus/unix.socket").call("POST", "/1.0/instances", {}, timeout=5)


def test_an_import_is_named_for_either_daemon():
    assert ba.import_headers("db", "default") == {
        "Content-Type": "application/octet-stream", "X-LXD-name": "db", "X-Incus-name": "db",
        "X-LXD-pool": "default", "X-Incus-pool": "default"}
    assert "X-Incus-pool" not in ba.import_headers("box-db-data")
