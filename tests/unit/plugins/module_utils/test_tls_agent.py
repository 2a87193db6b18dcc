"""_tls_agent: the TLS agent of the proxy container, run in a tmp root with fake certbot, nginx and
systemctl first on PATH and the real openssl (counted through a wrapper), so certificates and their
names are real."""
import inspect
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from ansible_collections.homelab.onebox.plugins.module_utils import _tls_agent as agent

OPENSSL = shutil.which("openssl")
pytestmark = pytest.mark.skipif(OPENSSL is None, reason="needs openssl")


def make_lineage(config_dir, name, names, openssl):
    """A lineage as certbot leaves one in its config dir: archive/NAME/*N.pem, live/NAME/*.pem links
    to the newest, renewal/NAME.conf (here also saying the names, for the fake's renew)."""
    le = config_dir
    archive, live = os.path.join(le, "archive", name), os.path.join(le, "live", name)
    for d in (archive, live, os.path.join(le, "renewal")):
        os.makedirs(d, exist_ok=True)
    n = 1 + len([f for f in os.listdir(archive) if f.startswith("cert")])
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "90",
                    "-subj", "/CN=" + names[0], "-addext", "subjectAltName=" + ",".join("DNS:" + d for d in names),
                    "-keyout", os.path.join(archive, "privkey%d.pem" % n), "-out", os.path.join(archive, "cert%d.pem" % n)],
                   check=True, capture_output=True)
    for kind in ("chain", "fullchain"):
        shutil.copy(os.path.join(archive, "cert%d.pem" % n), os.path.join(archive, "%s%d.pem" % (kind, n)))
    for kind in ("cert", "chain", "fullchain", "privkey"):
        link = os.path.join(live, kind + ".pem")
        if os.path.lexists(link):
            os.remove(link)
        os.symlink("../../archive/%s/%s%d.pem" % (name, kind, n), link)
    with open(os.path.join(le, "renewal", name + ".conf"), "w") as f:
        f.write("version = 2.1.0\ndomains = %s\n" % " ".join(names))


# One fake for certbot, nginx, systemctl and the openssl wrapper: it records its argv, REQUESTS_CA_BUNDLE,
# the accounts in certbot's --config-dir and its start and end times in FAKE_CALLS and does what
# the FAKE_* variables say, with certbot 2.1's words. certbot works in the dirs it is given.
FAKE = r'''
import json, os, shutil, subprocess, sys, time, urllib.parse, uuid
ROOT, OPENSSL = os.environ["ONEBOX_TLS_ROOT"], os.environ["REAL_OPENSSL"]
prog, args = os.path.basename(sys.argv[0]), sys.argv[1:]


def accounts():
    where = os.path.join(args[args.index("--config-dir") + 1], "accounts") if "--config-dir" in args else None
    return sorted(os.path.relpath(d, where) for d, _dirs, files in os.walk(where or "/nonexistent") if "regr.json" in files)


def record(**values):
    with open(os.environ["FAKE_CALLS"], "a") as f:
        f.write(json.dumps(dict(values, pid=os.getpid(), time=time.time())) + "\n")


def run():
    record(argv=[prog] + args, ca=os.environ.get("REQUESTS_CA_BUNDLE"), accounts=accounts())
    try:
        return main()
    finally:
        record(end=True)
FRAME = "- " * 39 + "-"
ADVICE = ("Ask for help or search for solutions at https://community.letsencrypt.org. See the logfile "
          "/var/log/letsencrypt/letsencrypt.log or re-run Certbot with -v for more details.")


def arg(flag):
    return args[args.index(flag) + 1]


def systemd(*parts):
    return os.path.join(ROOT, "etc", "systemd", "system", *parts)


def main():
    if prog == "openssl":
        os.execv(OPENSSL, [OPENSSL] + args)
    if prog == "nginx":
        if os.environ.get("FAKE_NGINX_FAIL"):
            print("nginx: [emerg] " + os.environ["FAKE_NGINX_FAIL"], file=sys.stderr)
            print("nginx: configuration file /etc/nginx/nginx.conf test failed", file=sys.stderr)
            return 1
        return 0
    if prog == "systemctl":
        if args[0] == "enable" and not os.path.lexists(systemd("timers.target.wants", args[1])):
            os.makedirs(systemd("timers.target.wants"), exist_ok=True)
            os.symlink("/etc/systemd/system/" + args[1], systemd("timers.target.wants", args[1]))
        if args[0] == "mask":
            os.symlink("/dev/null", systemd(args[1]))
        return 0
    if args[0] == "register":
        if os.environ.get("FAKE_REGISTER_FAIL"):
            print("Saving debug log to /var/log/letsencrypt/letsencrypt.log")
            print(os.environ["FAKE_REGISTER_FAIL"])
            print(ADVICE, file=sys.stderr)
            return 1
        url = urllib.parse.urlparse(arg("--server"))
        where = os.path.join(arg("--config-dir"), "accounts", url.netloc + url.path, uuid.uuid4().hex)
        os.umask(0o077)  # certbot makes accounts/ and every dir under it 0700
        os.makedirs(where)
        for f, mode in (("meta.json", 0o644), ("regr.json", 0o644), ("private_key.json", 0o400)):
            with open(os.path.join(where, f), "w") as out:
                out.write("{}")
            os.chmod(os.path.join(where, f), mode)
        print("Account registered.")
        return 0
    time.sleep(float(os.environ.get("FAKE_CERTBOT_SLEEP") or 0))
    if args[0] == "certonly":
        name = arg("--cert-name")
        fail = json.loads(os.environ.get("FAKE_CERTBOT_FAIL", "{}")).get(name)
        if fail:
            print("Saving debug log to /var/log/letsencrypt/letsencrypt.log")
            print(fail)
            print(ADVICE, file=sys.stderr)
            return 1
        domains = [args[i + 1] for i, a in enumerate(args) if a == "-d"]
        make_lineage(arg("--config-dir"), name, os.environ.get("FAKE_CERTBOT_NAMES", "").split() or domains, OPENSSL)
        print("Successfully received certificate.")
        return 0
    if args[0] == "renew":
        outcomes, ok, bad, le = json.loads(os.environ.get("FAKE_RENEW", "{}")), [], [], arg("--config-dir")
        print("Saving debug log to %s/letsencrypt.log" % arg("--logs-dir"))
        renewal = os.path.join(le, "renewal")
        for conf in sorted(os.listdir(renewal)):
            name = conf[:-len(".conf")]
            print("\n%s\nProcessing %s/%s\n%s" % (FRAME, renewal, conf, FRAME))
            if name not in outcomes:
                print("Certificate not yet due for renewal")
                continue
            print("Renewing an existing certificate for %s" % name)
            if outcomes[name] == "ok":
                with open(os.path.join(renewal, conf)) as f:
                    names = [line.split(" = ")[1].split() for line in f if line.startswith("domains")][0]
                make_lineage(le, name, names, OPENSSL)
                sys.stdout.flush()
                subprocess.run(arg("--deploy-hook"), shell=True, check=True, env=dict(os.environ, RENEWED_LINEAGE=os.path.join(le, "live", name)))
                ok.append(name)
                continue
            print("\nCertbot failed to authenticate some domains (authenticator: webroot). The Certificate Authority reported these problems:")
            print("  Domain: %s\n  Type:   connection\n  Detail: %s\n" % (name, outcomes[name]))
            print("Hint: The Certificate Authority failed to download the temporary challenge files created by Certbot.\n")
            sys.stdout.flush()
            print("Failed to renew certificate %s with error: Some challenges have failed." % name, file=sys.stderr)
            sys.stderr.flush()
            bad.append(name)
        print("\n" + FRAME)
        if ok:
            print("The following renewals succeeded:" if bad else "Congratulations, all renewals succeeded: ")
            print("\n".join("  %s/live/%s/fullchain.pem (success)" % (le, n) for n in ok))
        sys.stdout.flush()
        if bad:
            print("All renewals failed. The following certificates could not be renewed:" if not ok else "The following renewals failed:", file=sys.stderr)
            print("\n".join("  %s/live/%s/fullchain.pem (failure)" % (le, n) for n in bad), file=sys.stderr)
        print(FRAME)
        sys.stdout.flush()
        if bad:
            print("%d renew failure(s), 0 parse failure(s)\n%s" % (len(bad), ADVICE), file=sys.stderr)
            return 1
        return 0
    return 2


'''

APP = {"name": "app.example.test", "domains": ["app.example.test"], "mode": "acme", "challenge": "http"}
WILD = {"name": "_wildcard.wild.example.test", "domains": ["*.wild.example.test"], "mode": "acme", "challenge": "dns"}
INTRA = {"name": "intra.example.test", "domains": ["intra.example.test", "intra2.example.test"], "mode": "self_signed"}
SHOP = {"name": "shop.example.test", "domains": ["shop.example.test"], "mode": "provided"}


class Box:
    """A tmp root with the fakes first on PATH; run() calls the agent in-process."""

    def __init__(self, tmp_path, monkeypatch, capsys):
        self.root, self.capsys, self.calls_file = str(tmp_path / "root"), capsys, str(tmp_path / "calls.jsonl")
        self.monkeypatch = monkeypatch
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        source = "#!%s\n%s%s\nsys.exit(run())\n" % (sys.executable, FAKE, inspect.getsource(make_lineage))
        for prog in ("certbot", "nginx", "systemctl", "openssl"):
            (bin_dir / prog).write_text(source)
            (bin_dir / prog).chmod(0o755)
        for name, value in dict(PATH="%s:%s" % (bin_dir, os.environ["PATH"]), ONEBOX_TLS_ROOT=self.root,
                                REAL_OPENSSL=OPENSSL, FAKE_CALLS=self.calls_file).items():
            monkeypatch.setenv(name, value)
        for name in ("FAKE_CERTBOT_FAIL", "FAKE_CERTBOT_NAMES", "FAKE_CERTBOT_SLEEP", "FAKE_NGINX_FAIL", "FAKE_REGISTER_FAIL", "FAKE_RENEW",
                     "REQUESTS_CA_BUNDLE"):
            monkeypatch.delenv(name, raising=False)
        self.config(certs=[APP])

    def env(self, **values):
        for name, value in values.items():
            self.monkeypatch.setenv(name, value)

    def path(self, *parts):
        return os.path.join(self.root, *(p.lstrip("/") for p in parts))

    def config(self, **over):
        config = dict(owner="mybox", email="admin@example.org", directory="https://acme.test/directory",
                      ca_bundle="/etc/onebox-tls/acme-ca.pem", key_type="ecdsa", webroot="/var/www/onebox-acme",
                      dns={"auth_hook": "/etc/onebox-tls/dns-auth-hook", "cleanup_hook": "/etc/onebox-tls/dns-cleanup-hook"},
                      renew_calendar="*-*-* 00,12:00:00", certs=[APP])
        config.update(over)
        os.makedirs(self.path("/etc/onebox-tls"), exist_ok=True)
        with open(self.path(agent.CONFIG), "w") as f:
            json.dump(config, f)

    def run(self, *argv):
        """(exit status, the JSON on stdout, the stderr lines); the calls so far are forgotten first."""
        if os.path.exists(self.calls_file):
            os.remove(self.calls_file)
        self.capsys.readouterr()
        status = agent.main(list(argv), root=self.root)
        out, err = self.capsys.readouterr()
        assert len(out.splitlines()) == 1, out
        return status, json.loads(out), err.splitlines()

    def calls(self, prog=None):
        """The calls in the order they started, each with its start and end time."""
        if not os.path.exists(self.calls_file):
            return []
        with open(self.calls_file) as f:
            lines = [json.loads(line) for line in f]
        ends = {c["pid"]: c["time"] for c in lines if "end" in c}
        calls = [dict(c, start=c["time"], end=ends.get(c["pid"])) for c in lines if "argv" in c]
        return [c for c in calls if prog is None or c["argv"][0] == prog]

    def argvs(self, prog):
        return [c["argv"][1:] for c in self.calls(prog)]

    def names(self, path):
        return agent.Agent(self.root).cert_info(path)["names"]

    def target(self, name, f="fullchain.pem"):
        return os.readlink(self.path(agent.SERVING, name, f))

    def state(self, name):
        with open(self.path(agent.SERVING, name, "state.json")) as f:
            return json.load(f)

    def provide(self, name, names):
        where = self.path(agent.PROVIDED, name)
        os.makedirs(where)
        subprocess.run([OPENSSL, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "10", "-subj", "/CN=" + names[0],
                        "-addext", "subjectAltName=" + ",".join("DNS:" + d for d in names),
                        "-keyout", os.path.join(where, "privkey.pem"), "-out", os.path.join(where, "fullchain.pem")],
                       check=True, capture_output=True)

    def lineage(self, name, names):
        make_lineage(self.path(agent.LINEAGES, name), name, names, OPENSSL)

    def live(self, name, f="fullchain.pem"):
        return self.path(agent.LINEAGES, name, "live", name, f)

    def dirs(self, name):
        """The --config-dir, --work-dir and --logs-dir of lineage name's certbot."""
        return ["--config-dir", self.path(agent.LINEAGES, name), "--work-dir", self.path(agent.WORK, name),
                "--logs-dir", self.path(agent.CERTBOT_LOGS, name)]

    def tree(self):
        """Every path under the root with its kind, mode, and content or link target."""
        out = {}
        for where, dirs, files in os.walk(self.root):
            for n in dirs + files:
                p = os.path.join(where, n)
                st = os.lstat(p)
                if os.path.islink(p):
                    out[p] = ("link", os.readlink(p))
                elif os.path.isdir(p):
                    out[p] = ("dir", st.st_mode)
                else:
                    with open(p, "rb") as f:
                        out[p] = ("file", st.st_mode, f.read())
        return out


@pytest.fixture
def box(tmp_path, monkeypatch, capsys):
    return Box(tmp_path, monkeypatch, capsys)


# ---- prepare -------------------------------------------------------------------------------
def test_prepare_links_placeholders_self_signed_and_provided(box):
    box.config(certs=[APP, INTRA, SHOP])
    box.provide("shop.example.test", ["shop.example.test"])
    status, out, err = box.run("prepare")
    assert status == 0 and out["changed"] and out["removed"] == [] and out["account"] == "registered", (out, err)
    assert out["certs"] == [dict(name="app.example.test", mode="acme", serving="placeholder", pending=True),
                            dict(name="intra.example.test", mode="self_signed", serving="self_signed", pending=False),
                            dict(name="shop.example.test", mode="provided", serving="provided", pending=False)]
    assert "link app.example.test -> placeholder" in out["actions"]
    placeholder = box.path("/etc/letsencrypt/onebox/placeholder/app.example.test")
    assert box.target("app.example.test") == placeholder + "/fullchain.pem"
    assert box.target("app.example.test", "privkey.pem") == placeholder + "/privkey.pem"
    assert box.names(placeholder + "/fullchain.pem") == ["app.example.test"]
    assert os.stat(placeholder + "/privkey.pem").st_mode & 0o777 == 0o600
    self_signed = box.path("/etc/letsencrypt/onebox/self-signed/intra.example.test/fullchain.pem")
    assert box.target("intra.example.test") == self_signed
    assert box.names(self_signed) == ["intra.example.test", "intra2.example.test"]
    assert box.target("shop.example.test") == box.path(agent.PROVIDED, "shop.example.test", "fullchain.pem")
    assert box.state("app.example.test")["serving"] == "placeholder"
    assert box.state("shop.example.test") == dict(names=["shop.example.test"], mode="provided", serving="provided")
    with open(box.path("/etc/systemd/system/onebox-tls-renew.timer")) as f:
        timer = f.read()
    assert timer.startswith("# Managed by homelab.onebox") and "OnCalendar=*-*-* 00,12:00:00\n" in timer
    assert "RandomizedDelaySec=1h\n" in timer and "Persistent=true\n" in timer and "WantedBy=timers.target\n" in timer
    with open(box.path("/etc/systemd/system/onebox-tls-renew.service")) as f:
        service = f.read()
    assert service.startswith("# Managed by homelab.onebox") and "ExecStart=/usr/local/sbin/onebox-tls renew\n" in service
    assert "Type=oneshot\n" in service and "TimeoutStartSec=" in service
    assert box.argvs("systemctl") == [["daemon-reload"], ["enable", agent.TIMER], ["restart", agent.TIMER]]
    assert [argv[0] for argv in box.argvs("certbot")] == ["register"]
    with open(box.path(agent.LOG)) as f:
        assert "onebox-tls: link app.example.test -> placeholder" in f.read()
    assert all(line.startswith("onebox-tls: ") for line in err)


def test_second_prepare_changes_nothing_and_runs_no_openssl(box):
    linked = dict(APP, name="b.example.test", domains=["b.example.test"])
    box.config(certs=[APP, INTRA, SHOP, linked])
    box.provide("shop.example.test", ["shop.example.test"])
    box.lineage("b.example.test", ["b.example.test"])
    assert [c["serving"] for c in box.run("prepare")[1]["certs"]] == ["placeholder", "self_signed", "provided", "acme"]
    status, out, err = box.run("prepare")
    assert status == 0 and out["changed"] is False and out["actions"] == [] and out["account"] == "present" and err == []
    assert box.calls() == []


def test_prepare_disables_and_masks_debians_certbot_timer_once(box):
    os.makedirs(box.path("/lib/systemd/system"))
    open(box.path("/lib/systemd/system/certbot.timer"), "w").close()
    status, out, _err = box.run("prepare")
    assert "mask certbot.timer" in out["actions"]
    assert box.argvs("systemctl")[-2:] == [["disable", "--now", "certbot.timer"], ["mask", "certbot.timer"]]
    assert box.run("prepare")[1]["changed"] is False and box.calls() == []


def test_prepare_rewrites_the_timer_when_the_calendar_changes(box):
    box.run("prepare")
    box.config(renew_calendar="daily")
    status, out, _err = box.run("prepare")
    assert out["actions"] == ["unit onebox-tls-renew.timer"]
    assert box.argvs("systemctl") == [["daemon-reload"], ["enable", agent.TIMER], ["restart", agent.TIMER]]
    with open(box.path("/etc/systemd/system/onebox-tls-renew.timer")) as f:
        assert "OnCalendar=daily\n" in f.read()


def test_a_lineage_with_the_declared_names_is_linked_without_certbot(box):
    box.lineage("app.example.test", ["app.example.test"])
    status, out, _err = box.run("prepare")
    assert out["certs"] == [dict(name="app.example.test", mode="acme", serving="acme", pending=False)]
    assert box.target("app.example.test") == box.live("app.example.test")
    assert box.argvs("certbot") == [] and out["account"] == "none"
    assert not os.path.exists(box.path("/etc/letsencrypt/onebox/placeholder/app.example.test"))


def test_a_lineage_with_other_names_is_not_linked(box):
    box.lineage("app.example.test", ["app.example.test", "old.example.test"])
    status, out, _err = box.run("prepare")
    assert out["certs"][0]["serving"] == "placeholder" and out["certs"][0]["pending"] is True
    assert "placeholder" in box.target("app.example.test")


def test_a_recreated_container_is_relinked_from_the_volume_without_new_keys(box):
    box.config(certs=[APP, INTRA])
    box.lineage("app.example.test", ["app.example.test"])
    box.run("prepare")
    shutil.rmtree(box.path("/etc/nginx"))
    status, out, _err = box.run("prepare")
    assert [c["serving"] for c in out["certs"]] == ["acme", "self_signed"]
    assert sorted(out["actions"]) == ["link app.example.test -> acme", "link intra.example.test -> self_signed"]
    assert box.argvs("certbot") == []
    assert all(argv[0] == "x509" for argv in box.argvs("openssl"))


def test_a_self_signed_pair_is_regenerated_when_its_names_change(box):
    box.config(certs=[INTRA])
    box.run("prepare")
    box.config(certs=[dict(INTRA, domains=["intra.example.test"])])
    status, out, _err = box.run("prepare")
    assert out["actions"] == ["generate self_signed intra.example.test"]
    assert box.names(box.path(agent.SERVING, "intra.example.test", "fullchain.pem")) == ["intra.example.test"]


def test_removed_certs_lose_links_pairs_and_lineage(box):
    box.config(certs=[APP, INTRA])
    box.run("prepare")
    box.lineage("old.example.test", ["old.example.test"])
    box.lineage("app.example.test", ["app.example.test"])
    for base in (agent.WORK, agent.CERTBOT_LOGS):
        for name in ("old.example.test", "app.example.test", "gone.example.test"):
            os.makedirs(box.path(base, name))
    box.config(certs=[APP])
    status, out, _err = box.run("prepare")
    assert status == 0 and out["removed"] == ["intra.example.test", "old.example.test"]
    assert "delete lineage old.example.test" in out["actions"] and "delete lineage gone.example.test" not in out["actions"]
    assert not os.path.exists(box.path(agent.SERVING, "intra.example.test"))
    assert not os.path.exists(box.path("/etc/letsencrypt/onebox/self-signed/intra.example.test"))
    assert box.argvs("certbot") == []
    assert sorted(os.listdir(box.path(agent.LINEAGES))) == ["app.example.test"]
    assert sorted(os.listdir(box.path(agent.WORK))) == sorted(os.listdir(box.path(agent.CERTBOT_LOGS))) == ["app.example.test"]
    assert os.path.exists(box.path(agent.SERVING, "app.example.test", "fullchain.pem"))


def test_a_provided_pair_no_longer_given_is_removed(box):
    box.config(certs=[APP, SHOP])
    box.provide("shop.example.test", ["shop.example.test"])
    box.run("prepare")
    box.config(certs=[APP])
    status, out, _err = box.run("prepare")
    assert status == 0 and out["removed"] == ["shop.example.test"]
    assert not os.path.exists(box.path(agent.PROVIDED, "shop.example.test"))


def test_a_cert_turned_self_signed_loses_its_lineage_and_placeholder(box):
    box.run("prepare")
    box.lineage("app.example.test", ["app.example.test"])
    box.config(certs=[dict(APP, mode="self_signed")])
    status, out, _err = box.run("prepare")
    assert out["removed"] == [] and out["certs"][0]["serving"] == "self_signed"
    assert "remove /etc/letsencrypt/onebox/placeholder/app.example.test" in out["actions"]
    assert "delete lineage app.example.test" in out["actions"] and box.argvs("certbot") == []
    assert not os.path.exists(box.path(agent.LINEAGES, "app.example.test"))


def account_dirs(box, config_dir):
    """{path under config_dir/accounts: mode} of every dir and file there."""
    top = os.path.join(config_dir, "accounts")
    return {os.path.relpath(os.path.join(d, n), top): os.stat(os.path.join(d, n)).st_mode & 0o777
            for d, dirs, files in os.walk(top) for n in dirs + files}


def test_prepare_registers_the_account_only_when_a_cert_is_pending_and_there_is_none(box):
    box.config(certs=[INTRA])
    assert box.run("prepare")[1]["account"] == "none" and box.argvs("certbot") == []
    box.lineage("app.example.test", ["app.example.test"])
    box.config(certs=[APP, INTRA])
    assert box.run("prepare")[1]["account"] == "none" and box.argvs("certbot") == []  # nothing pending: nothing to order
    box.config(certs=[APP, INTRA, dict(APP, name="b.example.test", domains=["b.example.test"])])
    before = box.tree()
    assert box.run("prepare", "--check")[1]["account"] == "would register" and box.calls() == [] and box.tree() == before
    status, out, err = box.run("prepare")
    assert status == 0 and out["account"] == "registered" and "onebox-tls: registered an ACME account at https://acme.test/directory" in err
    (call,) = box.calls("certbot")
    assert call["argv"][1:] == ["register", "--non-interactive", "--agree-tos", "--email", "admin@example.org",
                                "--server", "https://acme.test/directory", "--config-dir", box.path("/etc/letsencrypt"),
                                "--work-dir", box.path("/var/lib/onebox-tls/register"), "--logs-dir", box.path("/var/log/onebox-tls/register")]
    assert call["ca"] == "/etc/onebox-tls/acme-ca.pem"
    # where certbot 2.1 keeps it: accounts/HOST[:PORT]/PATH/ID/
    (account,) = os.listdir(box.path("/etc/letsencrypt/accounts/acme.test/directory"))
    assert agent.find_account(box.path("/etc/letsencrypt"), "https://acme.test/directory") == account
    assert agent.find_account(box.path("/etc/letsencrypt"), "https://other.test/directory") is None
    assert box.run("prepare")[1]["account"] == "present" and box.calls() == []


def test_a_failed_registration_is_a_note_and_obtain_registers_then(box):
    box.env(FAKE_REGISTER_FAIL=CERTBOT_UNREACHABLE)
    status, out, err = box.run("prepare")
    reason = "requests.exceptions.ConnectionError: HTTPSConnectionPool(host='acme.test', port=443): Max retries exceeded with url: /directory"
    assert status == 0 and out["account"] == "failed: " + reason and out["certs"][0]["pending"] is True
    assert [line for line in err if "account" in line] == [
        "onebox-tls: the ACME account could not be registered at https://acme.test/directory: %s; obtain tries again" % reason]
    status, out, err = box.run("obtain")  # still down: no order without an account
    assert status == 0 and out["failed"] == [dict(name="app.example.test", reason="no ACME account: " + reason)]
    assert [argv[0] for argv in box.argvs("certbot")] == ["register"]
    box.monkeypatch.delenv("FAKE_REGISTER_FAIL")
    status, out, err = box.run("obtain")
    assert status == 0 and out["obtained"] == ["app.example.test"]
    assert [argv[0] for argv in box.argvs("certbot")] == ["register", "certonly"]


@pytest.mark.parametrize("name", ["../evil", ".hidden", "a/b", "-x", "", "a\n"])
def test_a_bad_cert_name_is_refused(box, name):
    box.config(certs=[dict(APP, name=name)])
    status, out, err = box.run("prepare")
    assert status == 2 and "certificate name" in out["error"]
    assert box.calls() == [] and not os.path.exists(box.path(agent.SERVING))
    assert len(err) == 1 and err[0].startswith("onebox-tls: ")


def test_a_missing_provided_pair_fails(box):
    box.config(certs=[SHOP])
    status, out, _err = box.run("prepare")
    assert status == 1 and "provided pair" in out["error"]


def test_check_writes_nothing_and_runs_nothing(box):
    box.config(certs=[APP, INTRA])
    before = box.tree()
    status, out, _err = box.run("prepare", "--check")
    assert status == 0 and out["changed"] and box.tree() == before and out["account"] == "would register"
    assert [c["pending"] for c in out["certs"]] == [True, False]
    assert "unit onebox-tls-renew.timer" in out["actions"] and "generate placeholder app.example.test" in out["actions"]
    assert "webroot /var/www/onebox-acme" in out["actions"]
    assert box.calls() == []
    box.run("prepare")
    assert os.path.isdir(box.path("/var/www/onebox-acme"))
    box.lineage("old.example.test", ["old.example.test"])
    box.config(certs=[APP, WILD])
    before = box.tree()
    status, out, _err = box.run("prepare", "--check")
    assert out["removed"] == ["intra.example.test", "old.example.test"] and "delete lineage old.example.test" in out["actions"]
    assert box.tree() == before and box.calls() == []
    status, out, _err = box.run("obtain", "--check")
    assert out["obtained"] == ["app.example.test", "_wildcard.wild.example.test"] and box.tree() == before and box.calls() == []
    assert box.run("obtain", "--check", "nope")[0] == 2 and box.tree() == before


def test_check_reads_the_configuration_from_the_environment_when_given(box):
    box.run("prepare")
    before = box.tree()
    with open(box.path(agent.CONFIG)) as f:
        box.env(ONEBOX_TLS_CONFIG=json.dumps(dict(json.load(f), certs=[APP, INTRA])))
    status, out, _err = box.run("prepare", "--check")
    assert status == 0 and out["actions"] == ["generate self_signed intra.example.test", "link intra.example.test -> self_signed"]
    assert box.tree() == before


# ---- obtain --------------------------------------------------------------------------------
def test_obtain_http_passes_certbot_its_arguments_links_and_reloads_once(box):
    box.run("prepare")
    status, out, _err = box.run("obtain")
    assert status == 0 and out == dict(changed=True, obtained=["app.example.test"], failed=[], reloaded=True)
    certbot = box.calls("certbot")
    assert [c["argv"][1:] for c in certbot] == [[
        "certonly", "--non-interactive", "--agree-tos", "--email", "admin@example.org", "--server", "https://acme.test/directory",
        "--cert-name", "app.example.test", "--key-type", "ecdsa", "--renew-with-new-domains", "-d", "app.example.test",
        "--webroot", "-w", "/var/www/onebox-acme"] + box.dirs("app.example.test")]
    assert certbot[0]["ca"] == "/etc/onebox-tls/acme-ca.pem"
    assert box.target("app.example.test") == box.live("app.example.test")
    assert box.state("app.example.test")["serving"] == "acme"
    assert [c["argv"] for c in box.calls() if c["argv"][0] in ("nginx", "systemctl")] == [["nginx", "-t"], ["systemctl", "reload", "nginx"]]
    assert box.run("obtain")[1] == dict(changed=False, obtained=[], failed=[], reloaded=False) and box.calls() == []


def test_obtain_runs_the_orders_at_once_each_in_its_own_dirs_with_a_copy_of_the_account(box):
    b = dict(APP, name="b.example.test", domains=["b.example.test"])
    box.config(certs=[APP, b])
    box.run("prepare")
    (account,) = os.listdir(box.path("/etc/letsencrypt/accounts/acme.test/directory"))
    box.env(FAKE_CERTBOT_SLEEP="0.5")
    status, out, err = box.run("obtain")
    assert status == 0 and out == dict(changed=True, obtained=["app.example.test", "b.example.test"], failed=[], reloaded=True), err
    one, two = sorted(box.calls("certbot"), key=lambda c: c["argv"][c["argv"].index("--cert-name") + 1])
    # The two orders overlap (each sleeps 0.5 s): run one after the other they would not. (A bound on
    # the whole run's time said the same and failed on a loaded machine: 1.1-1.6 s at load 5-8.)
    assert one["start"] < two["end"] and two["start"] < one["end"], (one, two)
    for call, name in ((one, "app.example.test"), (two, "b.example.test")):
        assert call["argv"][1] == "certonly" and call["argv"][-6:] == box.dirs(name)
        assert call["accounts"] == ["acme.test/directory/" + account]  # copied in before the order
        assert account_dirs(box, box.path(agent.LINEAGES, name)) == account_dirs(box, box.path("/etc/letsencrypt"))
        assert box.target(name) == box.live(name)
    assert account_dirs(box, box.path(agent.LINEAGES, "b.example.test"))["acme.test/directory/%s/private_key.json" % account] == 0o400
    assert [c["argv"] for c in box.calls() if c["argv"][0] in ("nginx", "systemctl")] == [["nginx", "-t"], ["systemctl", "reload", "nginx"]]
    assert [line for line in err if "obtained" in line] == [
        "onebox-tls: obtained the certificate app.example.test", "onebox-tls: obtained the certificate b.example.test"]


@pytest.mark.parametrize("dns, tail", [
    ({"auth_hook": "/h/auth", "cleanup_hook": "/h/clean"},
     ["--manual", "--preferred-challenges", "dns", "--manual-auth-hook", "/h/auth", "--manual-cleanup-hook", "/h/clean"]),
    ({"plugin": "rfc2136", "credentials": "/c.ini", "propagation_seconds": 30},
     ["--dns-rfc2136", "--dns-rfc2136-credentials", "/c.ini", "--dns-rfc2136-propagation-seconds", "30"]),
    ({"plugin": "rfc2136", "credentials": "/c.ini", "propagation_seconds": None}, ["--dns-rfc2136", "--dns-rfc2136-credentials", "/c.ini"]),
])
def test_obtain_dns_passes_the_hooks_or_the_plugin(box, dns, tail):
    box.config(certs=[WILD], dns=dns, email=None, ca_bundle=None, key_type="rsa")
    box.run("prepare")
    status, out, _err = box.run("obtain")
    assert out["obtained"] == ["_wildcard.wild.example.test"]
    (call,) = box.calls("certbot")
    assert call["argv"][1:] == ["certonly", "--non-interactive", "--agree-tos", "--register-unsafely-without-email",
                                "--server", "https://acme.test/directory", "--cert-name", "_wildcard.wild.example.test",
                                "--key-type", "rsa", "--renew-with-new-domains", "-d", "*.wild.example.test"] + tail + box.dirs(WILD["name"])
    assert call["ca"] is None
    assert box.names(box.path(agent.SERVING, "_wildcard.wild.example.test", "fullchain.pem")) == ["*.wild.example.test"]


CERTBOT_CA_PROBLEM = """
Certbot failed to authenticate some domains (authenticator: webroot). The Certificate Authority reported these problems:
  Domain: app.example.test
  Type:   unauthorized
  Detail: 203.0.113.7: Invalid response from http://app.example.test/.well-known/acme-challenge/x: 404

Hint: The Certificate Authority failed to download the temporary challenge files created by Certbot.

Some challenges have failed."""
CERTBOT_UNREACHABLE = """An unexpected error occurred:
requests.exceptions.ConnectionError: HTTPSConnectionPool(host='acme.test', port=443): Max retries exceeded with url: /directory"""


def test_obtain_failure_logs_one_line_keeps_the_placeholder_and_goes_on(box):
    other = dict(APP, name="other.example.test", domains=["other.example.test"])
    box.config(certs=[APP, other])
    box.run("prepare")
    box.env(FAKE_CERTBOT_FAIL=json.dumps({"app.example.test": CERTBOT_CA_PROBLEM}))
    status, out, err = box.run("obtain")
    reason = "app.example.test: 203.0.113.7: Invalid response from http://app.example.test/.well-known/acme-challenge/x: 404"
    assert status == 0 and out["obtained"] == ["other.example.test"] and out["failed"] == [dict(name="app.example.test", reason=reason)]
    failures = [line for line in err if "could not be obtained" in line]
    assert failures == ["onebox-tls: certificate app.example.test could not be obtained: %s; the placeholder keeps serving" % reason]
    assert "placeholder" in box.target("app.example.test") and box.state("app.example.test")["serving"] == "placeholder"
    assert box.argvs("systemctl") == [["reload", "nginx"]]
    with open(box.path(agent.LOG)) as f:
        assert failures[0] in f.read()


def test_obtain_failure_reason_is_the_last_meaningful_line(box):
    box.run("prepare")
    box.env(FAKE_CERTBOT_FAIL=json.dumps({"app.example.test": CERTBOT_UNREACHABLE}))
    status, out, _err = box.run("obtain")
    assert out["failed"][0]["reason"].startswith("requests.exceptions.ConnectionError: HTTPSConnectionPool(host='acme.test'")
    assert out["reloaded"] is False and box.calls("nginx") == []


def test_obtain_refuses_a_lineage_with_other_names(box):
    box.run("prepare")
    box.env(FAKE_CERTBOT_NAMES="somewhere.else.test")
    status, out, _err = box.run("obtain")
    assert out["obtained"] == [] and "does not name app.example.test" in out["failed"][0]["reason"]
    assert "placeholder" in box.target("app.example.test")


def test_a_failing_nginx_t_keeps_the_old_configuration(box):
    box.run("prepare")
    box.env(FAKE_NGINX_FAIL='unknown directive "sever" in /etc/nginx/sites-enabled/app.conf:3')
    status, out, err = box.run("obtain")
    assert status == 0 and out["obtained"] == ["app.example.test"] and out["reloaded"] is False
    assert box.argvs("nginx") == [["-t"]] and box.argvs("systemctl") == []
    assert err[-1] == ('onebox-tls: nginx -t failed: nginx: [emerg] unknown directive "sever" in /etc/nginx/sites-enabled/app.conf:3; '
                       'nginx keeps serving its current configuration')


def test_obtain_of_a_named_cert_and_of_an_undeclared_one(box):
    box.config(certs=[APP, INTRA])
    box.run("prepare")
    assert box.run("obtain", "intra.example.test")[0] == 2
    assert box.run("obtain", "nope")[0] == 2
    status, out, _err = box.run("obtain", "--reload", "app.example.test")
    assert out["obtained"] == ["app.example.test"] and out["reloaded"] is True


def test_reload_command(box):
    assert box.run("reload") == (0, dict(reloaded=True), ["onebox-tls: reloaded nginx"])
    box.env(FAKE_NGINX_FAIL="bad")
    status, out, err = box.run("reload")
    assert status == 1 and out == dict(reloaded=False) and len(err) == 1 and box.argvs("systemctl") == []


# ---- renew ---------------------------------------------------------------------------------
def two_lineages(box):
    b = dict(APP, name="b.example.test", domains=["b.example.test"])
    box.config(certs=[APP, b])
    box.lineage("app.example.test", ["app.example.test"])
    box.lineage("b.example.test", ["b.example.test"])
    box.run("prepare")
    return b


def test_renew_reloads_nginx_once_for_two_renewed_lineages(box):
    two_lineages(box)
    box.env(FAKE_RENEW=json.dumps({"app.example.test": "ok", "b.example.test": "ok"}))
    status, out, _err = box.run("renew", "--force")
    assert status == 0 and out == dict(renewed=["app.example.test", "b.example.test"], failed=[], obtained=[], reloaded=True)
    # one certbot renew per lineage, in its dirs, started before nginx is reloaded once
    argvs = sorted(box.argvs("certbot"), key=lambda argv: argv[-5])
    assert [argv[-6:] for argv in argvs] == [box.dirs("app.example.test"), box.dirs("b.example.test")]
    for argv in argvs:
        assert argv[:3] == ["renew", "--non-interactive", "--no-random-sleep-on-renew"] and argv[-7] == "--force-renewal"
    assert [c["ca"] for c in box.calls("certbot")] == ["/etc/onebox-tls/acme-ca.pem"] * 2
    assert box.argvs("systemctl") == [["reload", "nginx"]] and box.argvs("nginx") == [["-t"]]
    assert box.names(box.live("b.example.test")) == ["b.example.test"] and box.target("b.example.test") == box.live("b.example.test")


def test_renew_logs_one_line_per_failed_lineage_and_exits_1(box):
    two_lineages(box)
    info = agent.Agent(box.root).cert_info(box.live("b.example.test"))
    box.env(FAKE_RENEW=json.dumps({"app.example.test": "ok", "b.example.test": "203.0.113.7: Timeout during connect"}))
    status, out, err = box.run("renew")
    reason = "b.example.test: 203.0.113.7: Timeout during connect"
    assert status == 1 and out == dict(renewed=["app.example.test"], failed=[dict(name="b.example.test", reason=reason)], obtained=[], reloaded=True)
    expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(info["not_after"]))
    assert [line for line in err if "failed" in line] == [
        "onebox-tls: renewal of b.example.test failed: %s; the current certificate (serial %s, expires %s) keeps serving" % (reason, info["serial"], expires)]
    assert len(box.argvs("certbot")) == 2 and not any("--force-renewal" in argv for argv in box.argvs("certbot"))


def test_renew_without_renewals_does_not_reload(box):
    two_lineages(box)
    assert box.run("renew") == (0, dict(renewed=[], failed=[], obtained=[], reloaded=False), [])
    assert box.argvs("nginx") == []


def test_renew_obtains_pending_certs_and_skips_certbot_renew_without_lineages(box):
    box.run("prepare")
    status, out, _err = box.run("renew")
    assert status == 0 and out["obtained"] == ["app.example.test"] and out["reloaded"] is True
    assert [argv[0] for argv in box.argvs("certbot")] == ["certonly"]


def test_renew_exits_1_when_a_pending_cert_still_fails(box):
    box.run("prepare")
    box.env(FAKE_CERTBOT_FAIL=json.dumps({"app.example.test": "DNS problem: NXDOMAIN looking up A for app.example.test"}))
    status, out, _err = box.run("renew")
    assert status == 1 and out["failed"][0]["reason"] == "DNS problem: NXDOMAIN looking up A for app.example.test"


def test_renew_regenerates_a_self_signed_pair_near_its_end(box):
    box.config(certs=[INTRA])
    box.run("prepare")
    where = box.path("/etc/letsencrypt/onebox/self-signed/intra.example.test")
    subprocess.run([OPENSSL, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "10",
                    "-subj", "/CN=intra", "-addext", "subjectAltName=DNS:intra.example.test,DNS:intra2.example.test",
                    "-keyout", where + "/privkey.pem", "-out", where + "/fullchain.pem"], check=True, capture_output=True)
    os.remove(box.path(agent.SERVING, "intra.example.test", "state.json"))
    status, out, _err = box.run("renew")
    assert status == 0 and out["reloaded"] is True and box.argvs("certbot") == []
    assert agent.Agent(box.root).cert_info(where + "/fullchain.pem")["not_after"] > time.time() + 300 * 86400


# ---- status and certbot's words --------------------------------------------------------------
def test_status_names_the_served_certificate(box):
    box.config(certs=[APP, INTRA])
    box.lineage("app.example.test", ["app.example.test"])
    box.run("prepare")
    status, out, _err = box.run("status")
    serial = subprocess.run([OPENSSL, "x509", "-noout", "-serial", "-in", box.live("app.example.test")],
                            capture_output=True, text=True, check=True).stdout.strip().split("=")[1]
    app, intra = out["certs"]
    assert app["serving"] == "acme" and app["serial"] == serial and app["names"] == ["app.example.test"]
    assert app["not_after"].endswith("Z") and intra["serving"] == "self_signed"


def test_runs_as_the_script_the_box_module_pushes(box, tmp_path):
    script = tmp_path / "onebox-tls"
    with open(agent.__file__) as f:
        script.write_text("#!/usr/bin/python3\n" + f.read())
    done = subprocess.run([sys.executable, str(script), "prepare"], capture_output=True, text=True, check=False)
    assert done.returncode == 0 and json.loads(done.stdout)["certs"][0]["pending"] is True, done.stderr
    assert "placeholder" in box.target("app.example.test")


def test_certbot_reason_of_real_certbot_2_1_output():
    # certonly with the CA unreachable (certbot 2.1.0 against a stopped pebble)
    output = ("Saving debug log to /var/log/letsencrypt/letsencrypt.log\nAn unexpected error occurred:\n"
              "ValueError: Requesting 127.0.0.1/dir: Connection refused\n"
              "Ask for help or search for solutions at https://community.letsencrypt.org. See the logfile "
              "/var/log/letsencrypt/letsencrypt.log or re-run Certbot with -v for more details.\n")
    assert agent.certbot_reason(output, 1) == "ValueError: Requesting 127.0.0.1/dir: Connection refused"
    assert agent.certbot_reason("", 124) == "certbot exited with status 124"


def test_renew_failures_from_certbots_closing_report_alone():
    output = ("All renewals failed. The following certificates could not be renewed:\n"
              "  /etc/letsencrypt/live/x.test/fullchain.pem (failure)\n")
    assert agent.renew_failures(output) == {"x.test": "certbot reports the renewal failed"}
    output = ("Renewal configuration file /etc/letsencrypt/renewal/y.test.conf (cert: y.test) produced an unexpected error: "
              "'Namespace' object has no attribute 'x'. Skipping.\n")
    assert agent.renew_failures(output) == {"y.test": "'Namespace' object has no attribute 'x'"}


def test_where_certbot_keeps_accounts_and_which_orders_run_one_after_the_other():
    assert agent.accounts_dir("/c", "https://198.19.19.118:14000/dir") == "/c/accounts/198.19.19.118:14000/dir"
    assert agent.accounts_dir("/c", "https://acme-v02.api.letsencrypt.org/directory") == "/c/accounts/acme-v02.api.letsencrypt.org/directory"
    dns = [dict(WILD, name="w", domains=["*.example.org"]), dict(WILD, name="apex", domains=["example.org", "www.example.org"]),
           dict(WILD, name="other", domains=["other.org"]), dict(APP, name="h", domains=["example.org"])]
    assert agent.batches(dns) == [["w", "apex"], ["other"], ["h"]]


def test_usage_errors(box):
    assert box.run("frobnicate")[0] == 2
    assert box.run("prepare", "--force")[0] == 2
    assert box.run("prepare", "app.example.test")[0] == 2
    assert box.calls() == []
