"""lxd_provision on a container restarted a moment ago: the read waits until the container's systemd
has reached basic.target, and a wait longer than the timeout fails naming the container and what
its init is doing. A unit ordered Before=basic.target stands for a slow early boot (a busy host): it
sleeps DELAY seconds, then writes a file, as tmpfiles or sysusers make files and users early in boot.
"""
import time

from conftest import run_module

IMAGE = "onebox-debian12"
DELAY = 10          # seconds basic.target comes late after each (re)start
SLOW_UNIT = "onebox-test-slowboot.service"
PROBE = "/opt/initwait/probe"
SLOW_BOOT = """[Unit]
Description=A slow early boot (homelab.onebox tests/integration/test_init_wait.py)
DefaultDependencies=no
Before=basic.target

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'sleep %d; mkdir -p /opt/initwait; echo early-boot > %s'

[Install]
WantedBy=basic.target
""" % (DELAY, PROBE)


def provision(name, timeout=60):
    return run_module("lxd_provision", {"timeout": timeout, "instances": [{
        "name": name,
        "files": [{"path": PROBE, "content": "declared\n"}],
        "services": [{"name": "initwait", "command": ["/bin/sleep", "infinity"]}]}]})


def wait_booted(lxd, name, timeout=60):
    deadline = time.monotonic() + timeout
    while lxd.exec(name, ["systemctl", "is-active", "basic.target"], timeout=30).stdout.strip() != "active":
        assert time.monotonic() < deadline, "%s did not reach basic.target in %d s" % (name, timeout)
        time.sleep(0.2)


def sh(lxd, name, script):
    return lxd.exec(name, ["sh", "-c", script], timeout=30).stdout.strip()


def test_a_just_restarted_container_is_read_once_basic_target_is_reached(lxd, instance_names):
    name = instance_names("iw")
    lxd.create_instance({"name": name, "type": "container", "source": {"type": "image", "alias": IMAGE}})
    lxd.change_state(name, "start")
    wait_booted(lxd, name)
    lxd.push_file(name, "/etc/systemd/system/" + SLOW_UNIT, SLOW_BOOT)
    lxd.run(name, ["systemctl", "enable", SLOW_UNIT], timeout=60)

    # Restarted, then provisioned at once: the read waits for the slow early boot.
    lxd.change_state(name, "restart", timeout=60)
    restarted = time.monotonic()
    first = provision(name)
    elapsed = time.monotonic() - restarted
    assert first.get("failed") is not True, first
    assert first["instances"][0]["actions"] == [
        "file %s" % PROBE, "unit onebox-initwait", "daemon-reload", "enable onebox-initwait", "start onebox-initwait"]
    assert sh(lxd, name, "systemctl is-active onebox-initwait") == "active"
    # Read after early boot had written its file, so the declared content is what stays. Read
    # before (no wait), the module's write would have been overwritten by early boot's.
    assert sh(lxd, name, "cat %s" % PROBE) == "declared"
    assert provision(name)["changed"] is False
    assert elapsed >= DELAY
    print("provisioned %.1f s after the restart (basic.target %d s late)" % (elapsed, DELAY))

    # A timeout shorter than the slow boot: a clear failure, within the timeout.
    lxd.change_state(name, "restart", timeout=60)
    restarted = time.monotonic()
    late = provision(name, timeout=3)
    elapsed = time.monotonic() - restarted
    assert late.get("failed") is True, late
    msg = late["msg"]
    assert msg.startswith("reading the state of %s: its init was not ready after 2." % name), msg
    # Before basic.target, systemd calls its state "initializing" (after it, "starting").
    assert "(basic.target not reached): systemd says 'initializing'" in msg, msg
    assert "running: %s start" % SLOW_UNIT in msg, msg
    assert late["init_state"] == "initializing" and late["instance"] == name
    assert elapsed < DELAY, "the failure came after the slow boot was over: %.1f s" % elapsed
