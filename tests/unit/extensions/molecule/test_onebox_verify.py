"""extensions/molecule/onebox_verify.py: the checks a description implies (what a user's CI scenario
asks of their box from outside), and how an answer is judged. The namespace and the requests
themselves run for real in molecule/user and the integration tests."""
from ansible_collections.homelab.onebox.extensions.molecule import onebox_verify
from ansible_collections.homelab.onebox.extensions.molecule.onebox_verify import Check, answer, checks

SERVICES = [
    {"name": "blog", "domains": ["blog.example.org", "*.blog.example.org"], "health": {"http": "/health", "expect": 204}},
    {"name": "tools", "kind": "app", "port": 8080, "routes": [{"domain": "blog.example.org", "path": "/jenkins/"}],
     "health": {"http": "/login"}},  # no domain of its own: its health check is not asked from outside
    {"name": "web", "kind": "pool", "count": 2, "domains": ["pool.example.org"], "host_port": 8000},
    {"name": "game", "kind": "plain", "forwards": [
        {"proto": "tcp", "port": "27015-27030"}, {"proto": "udp", "port": 51820},
        {"port": 2222, "host_address": "203.0.113.7"}, {"proto": "tcp", "port": 2223, "source": "192.0.2.0/24"}]},
    {"name": "db", "kind": "internal", "port": 5432},
]


def test_each_domain_route_health_host_port_and_tcp_forward_is_one_check():
    got = {(c.service, c.kind, c.host, c.path, c.port, c.expect, c.address) for c in checks(SERVICES)}
    assert got == {
        ("blog", "http", "blog.example.org", "/", 80, None, None),
        ("blog", "http", "onebox-verify.blog.example.org", "/", 80, None, None),  # a name the wildcard covers
        ("blog", "http", "blog.example.org", "/health", 80, 204, None),
        ("tools", "http", "blog.example.org", "/jenkins/", 80, None, None),
        ("web", "http", "pool.example.org", "/", 80, None, None),
        ("web", "http", "pool.example.org", "/", 8000, None, None),
        ("game", "tcp", None, None, 27015, None, None),  # a range: its first port
        ("game", "tcp", None, None, 2222, None, "203.0.113.7"),  # on the address it listens on
    }  # not: UDP, a forward limited to a source, the internal db


def test_check_ids_are_unique_and_name_the_service():
    ids = [c.id for c in checks(SERVICES)]
    assert len(ids) == len(set(ids)) and all(i.split(":")[0] in {"blog", "tools", "web", "game"} for i in ids), ids


def test_nothing_described_from_outside_gives_no_check():
    assert checks([{"name": "db", "kind": "internal", "port": 5432}]) == []


class FakeNs:
    host_address = "198.18.0.1"


def judged(monkeypatch, check, status, connect_error=None, catch_all=(404, "not found")):
    """What answer() says of ``check`` when the box answers ``status`` (and a name no site claims ``catch_all``)."""
    def http_get(ns, host, path, port, address):
        return catch_all if host == onebox_verify.UNCLAIMED else (status, "body")
    monkeypatch.setattr(onebox_verify, "http_get", http_get)
    monkeypatch.setattr(onebox_verify, "tcp_connect", lambda ns, address, port: connect_error)
    return answer(FakeNs(), check, timeout=0)


def test_an_answer_below_500_passes_a_5xx_or_none_fails(monkeypatch):
    check = Check("x", "http", "x", "a.example.org", "/", 80, None, None)
    assert judged(monkeypatch, check, 200) is None and judged(monkeypatch, check, 404) is None
    assert "502" in judged(monkeypatch, check, 502) and "a status below 500" in judged(monkeypatch, check, 502)
    assert "None" in judged(monkeypatch, check, None)


def test_a_health_check_wants_its_expect_or_the_https_redirect(monkeypatch):
    check = Check("x", "http", "x", "a.example.org", "/health", 80, 204, None)
    assert judged(monkeypatch, check, 204) is None and judged(monkeypatch, check, 301) is None
    assert "wanted 204" in judged(monkeypatch, check, 200)


def test_a_tcp_check_fails_with_the_connect_error(monkeypatch):
    check = Check("x", "tcp", "x", None, None, 2222, None, None)
    assert judged(monkeypatch, check, None) is None
    assert "198.18.0.1:2222" in judged(monkeypatch, check, None, "ConnectionRefusedError")


def test_a_404_that_is_the_catch_alls_answer_is_no_site(monkeypatch):
    check = Check("x", "http", "x", "a.example.org", "/", 80, None, None)
    assert "no site for it" in judged(monkeypatch, check, 404, catch_all=(404, "body"))
    assert judged(monkeypatch, check, 404, catch_all=(404, "another body")) is None
