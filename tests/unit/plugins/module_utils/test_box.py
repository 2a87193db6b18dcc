"""The box description: validation of the whole, and what it derives."""
import pytest

from ansible_collections.homelab.onebox.plugins.module_utils._box import parse_box
from ansible_collections.homelab.onebox.plugins.module_utils._errors import ValidationError
from ansible_collections.homelab.onebox.plugins.module_utils._instance import IMAGE_KEY

SITE = {"name": "site-a", "kind": "static", "domains": ["a.example.test"],
        "files": [{"path": "/var/www/html/index.html", "content": "A"}]}
APP = {"name": "app", "command": ["python3", "/srv/app/app.py"], "port": 8000, "domains": ["app.example.test"],
       "environment": {"SECRET": "s"}, "memory": "256MiB", "memory_swap": "512MiB", "cpus": "1",
       "boot": {"priority": 20, "delay": 2}}
JENKINS = {"name": "jenkins", "command": "python3 /srv/jenkins/app.py", "port": 8080,
           "routes": [{"domain": "app.example.test", "path": "/jenkins/"}]}
POOL = {"name": "web", "kind": "pool", "count": 3, "method": "least_conn", "domains": ["pool.example.test"],
        "host_port": 8000, "files": [{"path": "/var/www/html/index.html", "content": "member @INSTANCE@\n"}]}
VPN = {"name": "vpn", "kind": "plain", "command": ["python3", "/srv/vpn/echo.py"],
       "forwards": [{"proto": "udp", "port": 51820}]}
DB = {"name": "db", "kind": "internal", "command": ["python3", "/srv/db/db.py"], "port": 5432}
BOX = [SITE, APP, JENKINS, POOL, VPN, DB]


def plan(services=None, addresses=None, **options):
    return parse_box(BOX if services is None else services, options, addresses).as_dict()


def error(services, **options):
    with pytest.raises(ValidationError) as err:
        parse_box(services, options)
    return err.value


def test_containers_pool_members_made_from_the_image_all_at_once():
    result = plan()
    assert result["containers"] == ["site-a", "app", "jenkins", "web-1", "web-2", "web-3", "vpn", "db",
                                    "onebox-proxy"]
    items = {i["name"]: i for i in result["instances"]}
    # No base container to copy: every member comes from the image, none waits for another.
    assert all(items["web-%d" % n]["image"] == "onebox-debian12" and "copy_from" not in items["web-%d" % n]
               for n in (1, 2, 3))
    assert all(i.get("ipv4_address") == "auto" and i.get("state", "started") == "started" for i in items.values())


def test_limits_and_boot_order_reach_the_container():
    app = {i["name"]: i for i in plan()["instances"]}["app"]
    assert app == {"name": "app", "image": "onebox-debian12", "ipv4_address": "auto", "memory": "256MiB",
                   "memory_swap": "512MiB", "cpus": "1", "autostart": True, "autostart_priority": 20,
                   "autostart_delay": 2, "config": {
                       "user.onebox.image": "onebox-debian12", "user.onebox.service": "app",
                       "user.onebox.host": '{"domains":["app.example.test"],"forwards":[],"host_port":null,"kind":"app",'
                                           '"port":8000,"routes":[]}'}}


def test_app_runs_as_its_own_user_with_its_environment():
    app = {p["name"]: p for p in plan()["provision"]}["app"]
    assert app["users"] == [{"name": "app", "home": "/srv/app"}]
    service = app["services"][0]
    assert service["user"] == "app" and service["restart"] == "always"
    assert service["environment"] == {"SECRET": "s"}


def test_pool_members_get_their_own_page():
    pages = {p["name"]: p["files"][0]["content"] for p in plan()["provision"] if p["name"].startswith("web-")}
    assert pages == {"web-1": "member web-1\n", "web-2": "member web-2\n", "web-3": "member web-3\n"}


def test_sites_route_by_domain_and_path_with_pool_upstream():
    addresses = {"site-a": ["10.1.0.10"], "app": ["10.1.0.11"], "jenkins": ["10.1.0.12"],
                 "web-1": ["10.1.0.21"], "web-2": ["10.1.0.22"], "web-3": ["10.1.0.23"]}
    sites = {s["name"]: s for s in plan(addresses=addresses)["sites"]}
    assert sites["a.example.test"]["locations"] == [{"path": "/", "backend": "http://10.1.0.10:80"}]
    assert sites["app.example.test"]["locations"] == [{"path": "/", "backend": "http://10.1.0.11:8000"},
                                                      {"path": "/jenkins/", "backend": "http://10.1.0.12:8080"}]
    pool = sites["pool.example.test"]
    assert pool["upstreams"] == [{"name": "web", "method": "least_conn",
                                  "servers": ["10.1.0.21:80", "10.1.0.22:80", "10.1.0.23:80"]}]
    assert pool["locations"][0]["proxy"] == {"connect_timeout": "1s"}  # a dead member costs ~1 s once
    assert sites["web-port8000"]["listen"] == ["8000"]
    assert sites["web-port8000"]["locations"][0]["backend"] == "http://web"
    assert "upstreams" not in sites["web-port8000"]  # nginx upstream names are global: defined once


def test_forwards_proxy_ports_and_plain_udp():
    assert plan()["forwards"] == [
        {"proto": "tcp", "port": 80, "target": "onebox-proxy", "comment": "onebox proxy http"},
        {"proto": "tcp", "port": 8000, "target": "onebox-proxy", "comment": "onebox web"},
        {"proto": "udp", "port": 51820, "target": "vpn", "comment": "onebox vpn"},
    ]


def test_internal_service_is_never_forwarded_nor_proxied():
    result = plan()
    assert all(f["target"] != "db" for f in result["forwards"])
    assert all("db" not in str(s) for s in result["sites"])


def test_no_http_service_no_proxy():
    result = plan([VPN, DB])
    assert result["proxy"] is None and result["sites"] == []
    assert [f["port"] for f in result["forwards"]] == [51820]


@pytest.mark.parametrize("services,field,words", [
    ([SITE, dict(SITE, domains=["b.example.test"])], "services[site-a].name", "also used"),
    ([POOL, {"name": "web-2", "kind": "static"}], "services[web-2].name", "also used"),
    ([SITE, dict(APP, domains=["a.example.test"])], "services[app].domains[0]", "already claimed by services[site-a]"),
    ([dict(VPN, forwards=[{"port": 8000}]), POOL], "services[web].host_port", "already forwarded to vpn"),
    ([SITE, dict(VPN, forwards=[{"port": "70-90"}])], "services[vpn].forwards[0].port", "already forwarded to the proxy"),
    ([dict(POOL, count=0)], "services[web].count", "1 or more"),
    ([dict(JENKINS, routes=[{"path": "/jenkins/"}])], "services[jenkins].routes[0].domain", "needs the domain"),
    ([dict(SITE, name="bad;name")], "services[0].name", ""),
    ([dict(SITE, name="new\nline")], "services[0].name", ""),
    ([dict(SITE, domains=["a.example.test;"])], "services[site-a].domains[0]", ""),
    ([dict(SITE, domains=["{evil}.test"])], "services[site-a].domains[0]", ""),
    ([dict(JENKINS, routes=[{"domain": "x.test", "path": "/a b"}])], "services[jenkins].routes[0].path", ""),
    ([dict(VPN, forwards=[{"proto": "udp", "port": 70000}])], "services[vpn].forwards[0].port", "1-65535"),
    ([dict(VPN, forwards=[{"proto": "sctp", "port": 7}])], "services[vpn].forwards[0].proto", "tcp, udp"),
    ([dict(DB, forwards=[{"port": 5432}])], "services[db].forwards", "never exposed"),
    ([dict(DB, domains=["db.test"])], "services[db].domains", "not reached through the proxy"),
    ([dict(APP, port=None)], "services[app].port", "port its command listens on"),
    ([dict(SITE, colour="red")], "services[site-a].colour", "unknown key"),
    ([dict(SITE, kind="vm")], "services[site-a].kind", "static, app"),
    ([dict(APP, memory="lots")], "services[app].memory", ""),
    ([dict(APP, memory=256, memory_swap=None)], "services[app].memory", "give a unit: 256MiB"),
    ([dict(APP, memory="64MiB", memory_swap=None)], "services[app].memory", "below 128MiB"),
    ([dict(APP, memory_swap=1024)], "services[app].memory_swap", "give a unit: 1024MiB"),
    ([dict(APP, memory_swap="128MiB")], "services[app].memory_swap", "at least memory (256MiB)"),
    ([dict(APP, memory="50%")], "services[app].memory", "not a percentage"),
    ([dict(APP, cpus="0-1-2")], "services[app].cpus", "a set such as 0-1"),
    ([dict(APP, cpus="0")], "services[app].cpus", "at least 1"),
    ([dict(SITE, files=[{"path": "../etc/passwd", "content": "x"}])], "services[site-a].files[0].path", ""),
    ([dict(SITE, domains=[], routes=[{"domain": "a.example.test", "path": "/"}]),
      dict(APP, domains=["a.example.test"])], "services[site-a].routes[0].path", "already serves /"),
])
def test_bad_description_names_service_and_field(services, field, words):
    err = error(services)
    assert err.field == field, err.msg
    assert words in err.msg


def test_memory_as_a_share_of_the_host_and_cpu_sets_pass_through():
    app = {i["name"]: i for i in plan([dict(APP, memory="50%", memory_swap=None, cpus="0-1,3")])["instances"]}["app"]
    assert app["memory"] == "50%" and app["cpus"] == "0-1,3" and "memory_swap" not in app


def test_proxy_gets_nginx_without_debians_default_site():
    proxy = {p["name"]: p for p in plan()["provision"]}["onebox-proxy"]
    assert proxy["services"] == [{"name": "nginx"}]
    assert {"path": "/etc/nginx/sites-enabled/default", "state": "absent"} in proxy["files"]
    assert "onebox-proxy" not in {p["name"] for p in plan([VPN, DB])["provision"]}
    # room for a 253-character host name in server_name (Debian's bucket of 64 fails at ~48)
    room = [f for f in proxy["files"] if f["path"].startswith("/etc/nginx/conf.d/")]
    assert [f["content"].split("\n")[1] for f in room] == ["server_names_hash_bucket_size 512;"]


def test_the_proxy_is_named_after_the_owner():
    assert plan(owner="mybox")["proxy"] == "mybox-proxy"
    assert parse_box([SITE], {"owner": "mybox", "proxy_name": "edge"}).proxy == "edge"


# ---- wildcard domains: nginx's leading wildcard, resolved as nginx resolves it --------------------
WILD = {"name": "wild", "kind": "static", "domains": ["*.example.test"]}
WWW = {"name": "www", "kind": "static", "domains": ["www.example.test"]}


def sites_by_name(services):
    return {s["name"]: s for s in plan(services)["sites"]}


def test_a_wildcard_domain_is_a_site_with_a_plain_file_name():
    sites = sites_by_name([WILD])
    assert list(sites) == ["_wildcard.example.test"]
    assert sites["_wildcard.example.test"]["server_names"] == ["*.example.test"]
    assert sites["_wildcard.example.test"]["locations"] == [{"path": "/", "backend": "http://wild:80"}]


def test_a_wildcard_and_the_names_under_it_on_other_services_are_no_conflict():
    # nginx: an exact name first, then the longest leading wildcard; *.example.test never covers
    # example.test itself. Each name below goes to exactly one service.
    services = [WILD, WWW, {"name": "deep", "kind": "static", "domains": ["*.www.example.test"]},
                {"name": "apex", "kind": "static", "domains": ["example.test"]}]
    sites = sites_by_name(services)
    assert sorted(sites) == ["_wildcard.example.test", "_wildcard.www.example.test", "example.test",
                             "www.example.test"]
    assert {name: site["server_names"] for name, site in sites.items()} == {
        "_wildcard.example.test": ["*.example.test"], "_wildcard.www.example.test": ["*.www.example.test"],
        "example.test": ["example.test"], "www.example.test": ["www.example.test"]}


def test_the_same_wildcard_twice_is_claimed_once():
    err = error([WILD, dict(WWW, domains=["*.Example.test."])])
    assert err.field == "services[www].domains[0]" and err.value == "*.example.test"
    assert "already claimed by services[wild].domains[0]" in err.reason


@pytest.mark.parametrize("domain,words", [
    ("www.*.example.test", "only as the whole first label"),
    ("*foo.example.test", "only as the whole first label"),
    ("**.example.test", "only as the whole first label"),
    ("*.*.example.test", "only as the whole first label"),
    ("*", "'*' alone"),
    ("*.", "'*' alone"),
    (".example.test", "starts with a dot"),
    ("www.example.*", "trailing wildcard"),
])
def test_wildcard_forms_nginx_does_not_take_as_a_leading_wildcard_are_refused(domain, words):
    err = error([dict(WILD, domains=[domain])])
    assert err.field == "services[wild].domains[0]" and err.value == domain
    assert words in err.reason


def test_a_route_under_a_claimed_wildcard_adds_a_path_to_its_site():
    api = {"name": "api", "command": "python3 /srv/api.py", "port": 9000,
           "routes": [{"domain": "*.example.test", "path": "/api/"}]}
    sites = sites_by_name([WILD, api])
    assert sites["_wildcard.example.test"]["locations"] == [
        {"path": "/", "backend": "http://wild:80"}, {"path": "/api/", "backend": "http://api:9000"}]


def test_a_route_under_a_name_only_a_wildcard_covers_is_refused():
    # Its own site for www.example.test would win over *.example.test for every path of www.
    api = {"name": "api", "command": "python3 /srv/api.py", "port": 9000,
           "routes": [{"domain": "a.www.example.test", "path": "/api/"}]}
    err = error([WILD, api])
    assert err.field == "services[api].routes[0].domain" and err.value == "a.www.example.test"
    assert "services[wild].domains[0] serves it through *.example.test" in err.reason
    # the longest covering wildcard is the one named
    err = error([WILD, {"name": "deep", "kind": "static", "domains": ["*.www.example.test"]}, api])
    assert "through *.www.example.test" in err.reason
    # a narrower wildcard under a claimed one, as a route's domain, likewise
    err = error([WILD, dict(api, routes=[{"domain": "*.www.example.test", "path": "/api/"}])])
    assert err.field == "services[api].routes[0].domain" and "through *.example.test" in err.reason


def test_a_route_under_a_name_claimed_exactly_beside_a_wildcard_is_fine():
    api = {"name": "api", "command": "python3 /srv/api.py", "port": 9000,
           "routes": [{"domain": "www.example.test", "path": "/api/"},
                      {"domain": "example.test", "path": "/api/"}]}
    sites = sites_by_name([WILD, WWW, api])
    assert [loc["path"] for loc in sites["www.example.test"]["locations"]] == ["/", "/api/"]
    assert sites["example.test"]["locations"] == [{"path": "/api/", "backend": "http://api:9000"}]


def test_route_slash_under_a_claimed_wildcard_is_already_served():
    err = error([WILD, dict(WWW, domains=[], routes=[{"domain": "*.example.test", "path": "/"}])])
    assert err.field == "services[www].routes[0].path" and "already serves / of *.example.test" in err.reason


def test_a_domain_named_like_a_host_port_site_is_refused():
    # Both would be the proxy's site web-port8000: one would silently replace the other.
    err = error([POOL, dict(SITE, domains=["web-port8000"])])
    assert err.field == "services[site-a].domains[0]" and err.value == "web-port8000"
    assert "services[web].host_port" in err.reason


def test_long_domains_map_to_unique_short_site_names():
    long_label = "x" * 60
    exact = "%s.%s.example.test" % (long_label, long_label)
    sites = sites_by_name([dict(WILD, domains=["*." + exact]), dict(WWW, domains=[exact])])
    assert len(sites) == 2 and all(len(name) <= 100 for name in sites)
    assert sorted(s["server_names"][0] for s in sites.values()) == ["*." + exact, exact]


# ---- volumes, the recorded image, removed services ---------------------------------------------
DATA = {"name": "data", "path": "/var/lib/db", "size": "1GiB"}
MEDIA = {"name": "media", "path": "/srv/media", "shared": True}


def test_each_container_mounts_its_services_volumes_from_the_boxs_pool():
    services = [dict(DB, volumes=[DATA, dict(MEDIA, readonly=True)]),
                dict(POOL, volumes=[dict(MEDIA, path="/var/www/html/media")])]
    parts = parse_box(services, {"owner": "box", "volume_pool": "fast"})
    items = {i["name"]: i for i in parts.instances()}
    assert items["db"]["devices"] == {
        "vol-data": {"type": "disk", "pool": "fast", "source": "box-db-data", "path": "/var/lib/db"},
        "vol-media": {"type": "disk", "pool": "fast", "source": "box-shared-media", "path": "/srv/media",
                      "readonly": "true"}}
    assert all(items["web-%d" % n]["devices"] == {"vol-media": {"type": "disk", "pool": "fast", "source": "box-shared-media",
                                                                "path": "/var/www/html/media"}} for n in (1, 2, 3))
    assert "devices" not in items["box-proxy"]
    # each volume once, the shared one as first declared
    assert [(v["name"], v["service"], v["shared"], v["field"]) for v in parts.volumes()] == [
        ("box-db-data", "db", False, "services[db].volumes[0].name"),
        ("box-shared-media", None, True, "services[db].volumes[1].name")]
    assert parts.as_dict()["volumes"] == parts.volumes()


def test_every_container_records_the_image_it_is_made_from():
    items = {i["name"]: i for i in plan([SITE, dict(DB, image="custom-img")], image="base")["instances"]}
    assert items["site-a"]["config"][IMAGE_KEY] == "base" and items["site-a"]["image"] == "base"
    assert items["db"]["config"][IMAGE_KEY] == "custom-img" and items["db"]["image"] == "custom-img"
    assert items["onebox-proxy"]["config"][IMAGE_KEY] == "base"


def test_a_removed_service_builds_nothing():
    parts = parse_box([SITE, {"name": "db", "state": "absent", "purge": True}, {"name": "old", "state": "absent"}])
    assert [s.name for s in parts.services] == ["site-a"] and [(s.name, s.purge) for s in parts.removed] == [
        ("db", True), ("old", False)]
    assert parts.as_dict()["containers"] == ["site-a", "onebox-proxy"]


@pytest.mark.parametrize("services, field, value, words", [
    ([dict(DB, name="a", volumes=[dict(DATA, name="b-c")]), dict(VPN, name="a-b", volumes=[dict(DATA, name="c")])],
     "services[a-b].volumes[0].name", "c", "storage volume onebox-a-b-c is also services[a].volumes[0]'s"),
    ([dict(DB, name="shared", volumes=[dict(DATA, name="x")]), dict(VPN, volumes=[dict(MEDIA, name="x")])],
     "services[vpn].volumes[0].name", "x", "onebox-shared-x is also services[shared].volumes[0]'s"),
    ([dict(DB, name="proxy", volumes=[dict(DATA, name="tls")])], "services[proxy].volumes[0].name", "tls",
     "the proxy's certificate volume"),
    ([dict(DB, volumes=[dict(MEDIA, size="1GiB")]), dict(VPN, volumes=[dict(MEDIA, size="2GiB")])],
     "services[vpn].volumes[0].size", "2GiB", "declared with size 1GiB by services[db].volumes[0]"),
    ([dict(DB, volumes=[dict(MEDIA, size="1GiB")]), dict(VPN, volumes=[MEDIA])],
     "services[vpn].volumes[0].size", None, "declare it alike everywhere"),
    ([SITE, {"name": "site-a", "state": "absent"}], "services[site-a].name", "site-a", "is removed (state: absent) and also"),
    ([{"name": "db", "state": "absent"}, {"name": "db", "state": "absent", "purge": True}], "services[db].name", "db",
     "also services[db].name"),
    ([POOL, {"name": "web-1", "state": "absent"}], "services[web-1].name", "web-1", "also services[web].name"),
])
def test_volume_names_claimed_twice_and_removed_services_named_twice_are_refused(services, field, value, words):
    err = error(services)
    assert err.field == field and err.value == value and words in err.reason, err.msg


def test_one_shared_volume_declared_alike_is_one_volume():
    parts = parse_box([dict(DB, volumes=[dict(MEDIA, size="1GiB")]), dict(VPN, volumes=[dict(MEDIA, size="1024MiB")])])
    assert [v["name"] for v in parts.volumes()] == ["onebox-shared-media"]


def test_a_drained_pool_member_stays_in_its_upstream_marked_down():
    addresses = {"web-1": ["10.1.0.21"], "web-2": ["10.1.0.22"], "web-3": ["10.1.0.23"]}
    box = parse_box(BOX, {}, addresses)
    pool = {s["name"]: s for s in box.sites(down=("web-2",))}["pool.example.test"]
    assert pool["upstreams"][0]["servers"] == ["10.1.0.21:80", {"address": "10.1.0.22:80", "down": True},
                                               "10.1.0.23:80"]
    # Every other site is as without the drain.
    assert [s for s in box.sites(down=("web-2",)) if s["name"] != "pool.example.test"] == \
        [s for s in box.sites() if s["name"] != "pool.example.test"]


# ---- boot order (after) and what a service's process and setup pass on ------------------------------------
def priorities(services):
    return {i["name"]: i.get("autostart_priority") for i in plan(services)["instances"] if i["name"] != "onebox-proxy"}


def internal(name, **keys):
    return dict({"name": name, "kind": "internal", "command": ["/srv/%s" % name]}, **keys)


def test_after_gives_the_services_it_names_higher_priorities_and_nothing_more():
    # app after db and cache, db after cache; web untouched.
    services = [internal("app", after=["db", "cache"]), internal("db", after=["cache"]), internal("cache"),
                internal("web")]
    assert priorities(services) == {"app": 0, "db": 1, "cache": 2, "web": None}
    # An explicit priority is kept and the others placed around it.
    services = [internal("app", after=["db"]), internal("db", boot={"priority": 10})]
    assert priorities(services) == {"app": 0, "db": 10}
    services = [internal("app", after=["db"], boot={"priority": 5}), internal("db")]
    assert priorities(services) == {"app": 5, "db": 6}


@pytest.mark.parametrize("services, field, value, reason", [
    ([internal("app", after=["ghost"])], "services[app].after[0]", "ghost", "no service of that name"),
    ([internal("a", after=["b"]), internal("b", after=["c"]), internal("c", after=["a"])],
     "services[c].after[0]", "a", "a cycle: a after b after c after a"),
    ([internal("app", after=["db"], boot={"priority": 10}), internal("db", boot={"priority": 10})],
     "services[app].after[0]", "db", "services[db] starts at priority 10 (its boot.priority) and this service at 10 "
                                     "(its boot.priority)"),
    ([internal("app", after=["db"]), internal("db", boot={"priority": 0})],
     "services[app].after[0]", "db", "needs a boot.priority below 0"),
    ([internal("app", after=["db"]), internal("web", after=["app"]), internal("db", boot={"priority": 1})],
     "services[app].after[0]", "db", "this service at 1 (above the services that start after it)"),
])
def test_after_refuses_an_unknown_name_a_cycle_and_a_contradiction_naming_the_entry(services, field, value, reason):
    err = error(services)
    assert err.field == field and err.value == value and reason in err.reason, err.msg


def test_setup_restart_and_open_files_reach_each_member_inside():
    pool = dict(POOL, setup=[{"command": "gzip -k /var/www/html/index.html",
                              "when_changed": ["/var/www/html/index.html"]}])
    app = dict(APP, restart="on-failure", open_files=4096, setup=[{"command": ["/usr/bin/true"]}])
    items = {i["name"]: i for i in plan([pool, app])["provision"]}
    assert items["app"]["services"][0]["restart"] == "on-failure" and items["app"]["services"][0]["open_files"] == 4096
    assert items["app"]["setup"] == [{"command": ["/usr/bin/true"], "when_changed": [], "creates": None, "user": "app",
                                      "timeout": None, "service": "app"}]
    # A pool's members each run the steps; a service without a command has no service to run them as.
    for member in ("web-1", "web-2", "web-3"):
        assert items[member]["setup"] == [{"command": ["/bin/sh", "-c", "gzip -k /var/www/html/index.html"],
                                           "when_changed": ["/var/www/html/index.html"], "creates": None,
                                           "user": "root", "timeout": None}]
    assert "open_files" not in plan([APP])["provision"][0]["services"][0]
