"""nginx_site against real nginx with real traffic: our own nginx master on loopback, and nginx
inside an LXD container with its backends in a second container (see nginx_env.py)."""
from __future__ import annotations

import os
import re
import ssl
import socket
import time

import pytest
import yaml

import conftest
import nginx_env as ne
from conftest import run_module, run_playbook

from ansible_collections.homelab.onebox.plugins.module_utils._nginx_values import site_name_for


@pytest.fixture(scope="module", params=["host", "lxd"])
def env(request):
    if request.param == "host":
        environment = ne.HostEnv()
    else:
        environment = ne.LxdEnv(request.getfixturevalue("lxd"), conftest.RUN_PREFIX)
    yield environment
    environment.close()


def site_module(env, check=False, diff=False, **args):
    return run_module("nginx_site", env.module_args(**args), check=check, diff=diff)


def get(env, host, path="/", **kwargs):
    return ne.request(env.address, env.http_port, host, path, **kwargs)


def name_of(env, host, path="/"):
    resp = get(env, host, path)
    return resp.json()["name"] if resp.status == 200 else None


def default_site(env):
    return {"name": "000-default", "server_names": ["_"], "default_server": True, "listen": [env.listen],
            "locations": [{"path": "/", "status": 404}]}


def test_domains_paths_headers_websocket(env):
    app, jenkins, api, other = (env.backend(n) for n in ("app", "jenkins", "api", "other"))
    sites = [
        default_site(env),
        {"name": "app", "server_names": ["app.test"], "listen": [env.listen], "locations": [
            {"path": "/", "backend": "http://%s" % app.upstream},
            {"path": "/jenkins/", "backend": "http://%s/jenkins/" % jenkins.upstream},
            {"path": "/api/", "backend": "http://%s" % api.upstream, "strip_prefix": True},
        ]},
        {"name": "other", "server_names": ["other.test", "*.other.test"], "listen": [env.listen],
         "locations": [{"path": "/", "backend": "http://%s" % other.upstream}]},
    ]
    result = site_module(env, sites=sites, prune=True)
    assert result.get("changed") and result["reloaded"], result
    assert {s["name"]: s["action"] for s in result["sites"]}["app"] in ("created", "updated")

    ne.until(lambda: name_of(env, "app.test") == "app")
    # each domain its own backend, unknown hosts the default server's 404 (no other service's content)
    assert name_of(env, "other.test") == "other"
    assert name_of(env, "x.other.test") == "other"
    unknown = get(env, "unknown.test")
    assert unknown.status == 404 and '"name"' not in unknown.body
    # path routing: /jenkins/ keeps its path, /api/ strips its prefix
    body = get(env, "app.test", "/jenkins/job/build?x=1").json()
    assert (body["name"], body["path"]) == ("jenkins", "/jenkins/job/build?x=1")
    body = get(env, "app.test", "/api/v1/items").json()
    assert (body["name"], body["path"]) == ("api", "/v1/items")
    assert get(env, "app.test", "/elsewhere").json()["path"] == "/elsewhere"
    # headers reach the backend
    headers = get(env, "app.test", "/", headers={"X-Forwarded-For": "203.0.113.9"}).json()["headers"]
    assert headers["host"] == "app.test"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-real-ip"]
    assert headers["x-forwarded-for"] == "203.0.113.9, %s" % headers["x-real-ip"]
    if env.kind == "host":
        assert headers["x-real-ip"] == "127.0.0.1"
    # WebSocket upgrade through the proxy
    status, echoed = ne.websocket_echo(env.address, env.http_port, "app.test", "/socket")
    assert " 101 " in status + " ", status
    assert b"echo:ping" in echoed

    again = site_module(env, sites=sites, prune=True)
    assert again.get("changed") is False and again["reloaded"] is False, again
    assert {s["action"] for s in again["sites"]} == {"unchanged"}


def test_wildcard_names_resolve_as_nginx_does_and_no_response_names_its_version(env):
    wild, www = env.backend("wild"), env.backend("www")
    sites = [
        default_site(env),
        {"name": site_name_for("*.wild.test"), "server_names": ["*.wild.test"], "listen": [env.listen],
         "locations": [{"path": "/", "backend": "http://%s" % wild.upstream},
                       # nothing listens on port 1: nginx answers with its own 502 page
                       {"path": "/down/", "backend": "http://127.0.0.1:1"}]},
        {"name": site_name_for("www.wild.test"), "server_names": ["www.wild.test"], "listen": [env.listen],
         "locations": [{"path": "/", "backend": "http://%s" % www.upstream}]},
    ]
    result = site_module(env, sites=sites, prune=True)
    assert result.get("changed") and result["reloaded"], result
    assert {s["name"] for s in result["sites"]} >= {"_wildcard.wild.test", "www.wild.test"}
    assert "_wildcard.wild.test.conf" in env.snapshot()
    ne.until(lambda: name_of(env, "a.wild.test") == "wild")
    # exact name first, then the wildcard at any depth; the wildcard does not cover wild.test itself
    assert name_of(env, "www.wild.test") == "www"
    assert name_of(env, "a.b.wild.test") == "wild"
    assert get(env, "wild.test").status == 404

    # server_tokens off: the Server header and nginx's own error pages carry no version number
    answers = {"proxied": get(env, "a.wild.test"), "404": get(env, "nobody.test"),
               "502": get(env, "a.wild.test", "/down/")}
    assert [answers[k].status for k in ("proxied", "404", "502")] == [200, 404, 502]
    for what, resp in answers.items():
        assert resp.headers.get("server") == "nginx", (what, resp.headers)
    for what in ("404", "502"):
        assert "<center>nginx</center>" in answers[what].body, answers[what].body
        assert not re.search(r"nginx/\d", answers[what].body), (what, answers[what].body)


def test_pool_spreads_and_survives_a_stopped_member(env):
    members = [env.backend("pool%d" % i) for i in (1, 2, 3)]
    sites = [{"name": "pool", "server_names": ["pool.test"], "listen": [env.listen],
              "upstreams": [{"name": "pool_test", "method": "round_robin", "servers": [
                  {"address": m.upstream, "max_fails": 1, "fail_timeout": "1s"} for m in members]}],
              "locations": [{"path": "/", "backend": "http://pool_test"}]}]
    result = site_module(env, sites=sites, prune=True)
    assert result.get("changed"), result
    ne.until(lambda: name_of(env, "pool.test") in ("pool1", "pool2", "pool3"))

    seen = [name_of(env, "pool.test") for _i in range(30)]
    assert set(seen) == {"pool1", "pool2", "pool3"}, seen

    members[1].stop()
    answers = [get(env, "pool.test") for _i in range(60)]
    assert [r.status for r in answers] == [200] * 60
    assert {r.json()["name"] for r in answers} == {"pool1", "pool3"}

    members[1].start()
    answers = []

    def pool2_back():
        resp = get(env, "pool.test")
        answers.append(resp.status)
        return resp.status == 200 and resp.json()["name"] == "pool2"
    ne.until(pool2_back, timeout=20, interval=0.05)
    assert set(answers) == {200}


def test_broken_change_is_rolled_back_and_traffic_never_fails(env):
    good = env.backend("good")
    site = {"name": "stable", "server_names": ["stable.test"], "listen": [env.listen],
            "locations": [{"path": "/", "backend": "http://%s" % good.upstream}]}
    assert site_module(env, sites=[site], prune=True).get("failed") is not True
    ne.until(lambda: name_of(env, "stable.test") == "good")
    before = env.snapshot()

    broken = dict(site)
    broken["locations"] = [{"path": "/", "backend": "http://no-such-host.invalid:8080"}]

    def one_request():
        resp = get(env, "stable.test", timeout=5)
        assert resp.status == 200 and resp.json()["name"] == "good", (resp.status, resp.body[:200])

    with ne.RequestLoop(one_request) as loop:
        time.sleep(0.3)
        result = site_module(env, sites=[site, dict(broken, name="broken", server_names=["broken.test"])])
        time.sleep(0.3)
    assert result.get("failed"), result
    assert "host not found" in result["msg"] and "no-such-host.invalid" in result["msg"], result["msg"]
    assert "previous files are restored" in result["msg"]
    assert env.snapshot() == before
    assert loop.failures == [] and loop.ok > 10, (loop.ok, loop.failures[:3])

    # the same through the single-site form, replacing the live file: rolled back too
    result = site_module(env, **broken)
    assert result.get("failed") and "host not found" in result["msg"], result
    assert env.snapshot() == before
    assert name_of(env, "stable.test") == "good"


BAD_INPUTS = [
    ({"server_names": ["evil.test;"]}, "server_names[0]", "evil.test;"),
    ({"server_names": ["evil{.test"]}, "server_names[0]", "evil{.test"),
    ({"server_names": ["evil}.test"]}, "server_names[0]", "evil}.test"),
    ({"server_names": ['evil".test']}, "server_names[0]", 'evil".test'),
    ({"server_names": ["evil'.test"]}, "server_names[0]", "evil'.test"),
    ({"server_names": ["evil .test"]}, "server_names[0]", "evil .test"),
    ({"server_names": ["evil.test\nreturn 200"]}, "server_names[0]", "evil.test\\nreturn 200"),
    ({"locations": [{"path": "/x;return 200", "status": 404}]}, "locations[0].path", "/x;return 200"),
    ({"locations": [{"path": "/x{", "status": 404}]}, "locations[0].path", "/x{"),
    ({"locations": [{"path": "/x}", "status": 404}]}, "locations[0].path", "/x}"),
    ({"locations": [{"path": '/x"', "status": 404}]}, "locations[0].path", '/x"'),
    ({"locations": [{"path": "/x y", "status": 404}]}, "locations[0].path", "/x y"),
    ({"locations": [{"path": "/x\n", "status": 404}]}, "locations[0].path", "/x\\n"),
    ({"name": "../evil"}, "name", "../evil"),
    ({"name": "sub/evil"}, "name", "sub/evil"),
    ({"name": ".."}, "name", ".."),
    ({"listen": [70000]}, "listen[0]", "70000"),
    ({"listen": ["127.0.0.1:0"]}, "listen[0]", "127.0.0.1:0"),
    ({"locations": [{"path": "/"}]}, "locations[0]", "exactly one of backend"),
    ({"upstreams": [{"name": "p", "method": "fastest", "servers": ["a:1"]}],
      "locations": [{"path": "/", "backend": "http://p"}]}, "method", "fastest"),
]


def test_bad_input_fails_before_any_change(env, tmp_path):
    """All bad inputs in one playbook run (one ansible start-up), each task must fail."""
    ok_site = {"name": "fine", "server_names": ["fine.test"], "listen": [env.listen],
               "locations": [{"path": "/", "status": 204}]}
    assert site_module(env, sites=[ok_site], prune=True).get("failed") is not True
    before = env.snapshot()
    tasks = []
    for overrides, _field, _value in BAD_INPUTS:
        args = env.module_args(**dict(ok_site, **overrides))
        tasks.append({"homelab.onebox.nginx_site": args, "ignore_errors": True})
    # and the same through sites: (a bad site among good ones)
    tasks.append({"homelab.onebox.nginx_site": env.module_args(
        sites=[ok_site, dict(ok_site, name="other", server_names=["x;y"])], prune=True), "ignore_errors": True})
    playbook = tmp_path / "bad.yml"
    playbook.write_text(yaml.safe_dump([{"hosts": "localhost", "gather_facts": False, "tasks": tasks}]))
    _rc, out = run_playbook(str(playbook))
    results = [task["hosts"]["localhost"] for task in out["plays"][0]["tasks"]]
    assert len(results) == len(BAD_INPUTS) + 1
    for (overrides, field, value), result in zip(BAD_INPUTS + [({}, "sites[1].server_names[0]", "x;y")], results):
        assert result.get("failed"), (overrides, result)
        assert field in result["msg"] and value in result["msg"], (overrides, result["msg"])
        assert result.get("changed") is not True
    assert env.snapshot() == before


def test_prune_absent_and_hand_written_files(env):
    hand = "# hand-written, not ours\n"
    env.write_file("hand.conf", hand)
    try:
        one = {"name": "p1", "server_names": ["p1.test"], "listen": [env.listen], "locations": [{"path": "/", "status": 204}]}
        two = dict(one, name="p2", server_names=["p2.test"], locations=[{"path": "/", "status": 202}])
        result = site_module(env, sites=[one, two], prune=True)
        assert {s["name"]: s["action"] for s in result["sites"]}.get("p2") == "created", result
        ne.until(lambda: get(env, "p2.test").status == 202)

        result = site_module(env, sites=[one], prune=True)
        assert result.get("changed") and {s["name"]: s["action"] for s in result["sites"]} == {
            "p1": "unchanged", "p2": "removed"}, result
        ne.until(lambda: get(env, "p2.test").status != 202)
        snap = env.snapshot()
        if env.kind == "host":
            assert set(snap) == {"p1.conf", "hand.conf"} and snap["hand.conf"] == hand.encode()
        else:
            assert "p2.conf" not in snap and "hand.conf" in snap

        result = site_module(env, name="p1", state="absent")
        assert result.get("changed") and result["sites"] == [
            {"name": "p1", "file": os.path.join(env.conf_dir, "p1.conf"), "action": "removed"}], result
        assert site_module(env, name="p1", state="absent").get("changed") is False

        before = env.snapshot()
        for args in (dict(name="hand", state="absent"), dict(one, name="hand")):
            result = site_module(env, **args)
            assert result.get("failed") and "not written by homelab.onebox.nginx_site" in result["msg"], result
        assert env.snapshot() == before
    finally:
        if env.kind == "host":
            os.remove(os.path.join(env.conf_dir, "hand.conf"))
        else:
            env.lxd.run(env.instance, ["rm", "-f", "%s/hand.conf" % env.conf_dir])


def test_check_mode_and_diff(env):
    back = env.backend("cm")
    site = {"name": "cm", "server_names": ["cm.test"], "listen": [env.listen],
            "locations": [{"path": "/", "backend": "http://%s" % back.upstream}]}
    assert site_module(env, sites=[site], prune=True).get("failed") is not True
    before = env.snapshot()
    changed = dict(site, proxy={"read_timeout": "120s"})
    result = site_module(env, check=True, diff=True, **changed)
    assert result.get("changed") and result["reloaded"] is False, result
    diff = result["diff"][0]
    assert "proxy_read_timeout 60s;" in diff["before"] and "proxy_read_timeout 120s;" in diff["after"]
    assert diff["after_header"] == os.path.join(env.conf_dir, "cm.conf")
    assert env.snapshot() == before
    result = site_module(env, diff=True, **changed)
    assert result.get("changed") and result["reloaded"], result
    assert site_module(env, check=True, **changed).get("changed") is False


@pytest.mark.parametrize("env", ["host"], indirect=True)
def test_tls_redirect_hsts_http2(env):
    """On the host's nginx only (the base image has no openssl to make a certificate)."""
    back = env.backend("secure")
    crt, key = env.make_cert("secure.test")
    site = {"name": "secure", "server_names": ["secure.test"], "listen": [env.listen],
            "tls": {"certificate": crt, "key": key, "listen": [env.tls_listen]},
            "locations": [{"path": "/", "backend": "http://%s" % back.upstream}]}
    result = site_module(env, sites=[site], prune=True)
    assert result.get("changed"), result
    redirect = ne.until(lambda: [r for r in [get(env, "secure.test", "/a?b=1")] if r.status == 301])[0]
    assert redirect.headers["location"] == "https://secure.test:%d/a?b=1" % env.https_port
    resp = ne.request(env.address, env.https_port, "secure.test", "/x", tls=True)
    assert resp.status == 200 and resp.json()["name"] == "secure"
    assert resp.json()["headers"]["x-forwarded-proto"] == "https"
    assert resp.headers["strict-transport-security"] == "max-age=63072000"
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection((env.address, env.https_port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="secure.test") as tls_sock:
            assert tls_sock.selected_alpn_protocol() == "h2"
            assert tls_sock.version() in ("TLSv1.2", "TLSv1.3")
