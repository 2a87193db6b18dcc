"""_box_info on fake reads: site files written by the collection's own renderer, rules by its own
dnat renderer, listings shaped as the daemon's; what the box is made of, what differs from the
description, and the table."""
from __future__ import annotations

import pytest

from ansible_collections.homelab.onebox.plugins.module_utils import _box_info as bi
from ansible_collections.homelab.onebox.plugins.module_utils import _dnat, _dnat_rules
from ansible_collections.homelab.onebox.plugins.module_utils._box import parse_box
from ansible_collections.homelab.onebox.plugins.module_utils._instance_set import OWNER_KEY
from ansible_collections.homelab.onebox.plugins.module_utils._nginx_render import catch_all_site, file_name, render_site
from ansible_collections.homelab.onebox.plugins.module_utils._nginx_site import parse_sites

OWNER = "unit"
NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z
STARTED = "2027-01-15T05:59:30.123456789Z"  # two hours and a half minute before NOW, nanoseconds as LXD writes them
ADDRESSES = {"site": ["10.0.0.10"], "web-1": ["10.0.0.11"], "web-2": ["10.0.0.12"], "vpn": ["10.0.0.13"],
             "unit-proxy": ["10.0.0.14"]}
SERVICES = [
    {"name": "site", "domains": ["site.test"], "tls": "self_signed", "memory": "256MiB", "cpus": "1",
     "volumes": [{"name": "data", "path": "/srv/data"}]},
    {"name": "web", "kind": "pool", "count": 2, "domains": ["web.test"], "host_port": 8000,
     "routes": [{"domain": "site.test", "path": "/web/"}]},
    {"name": "vpn", "kind": "plain", "forwards": [{"proto": "udp", "port": 51820},
                                                  {"proto": "tcp", "port": "7000-7002", "target_port": "8000-8002",
                                                   "source": ["192.0.2.0/24", "198.51.100.7"]}]},
]
CERT = {"name": "site.test", "mode": "self_signed", "serving": "self_signed", "serial": "01",
        "not_after": "2027-03-16T08:00:00Z", "names": ["site.test"]}


def box(services=None):
    return parse_box(SERVICES if services is None else services, {"owner": OWNER}, dict(ADDRESSES))


def site_files(services=None, down=()):
    """The proxy's files as the box module writes them (the catch-all included)."""
    parts = box(services)
    sites = parts.sites(down=down)
    sites.insert(0, catch_all_site(sites=sites))
    return {file_name(site["name"]): render_site(site) for site in parse_sites(sites, log_dir="/var/log/nginx")}


def rules_text(services=None, prefix="UNIT", owner=OWNER, extra=()):
    """iptables-save-like text of the box's forwards, as the dnat module writes them."""
    parts = box(services)
    forwards = parts.forwards() + list(extra)
    parsed = _dnat.parse_forwards(forwards)
    addresses = {name: found[0] for name, found in ADDRESSES.items()}
    resolved = [f._replace(address=addresses.get(f.target, f.target if f.target[0].isdigit() else "10.0.0.99"))
                for f in parsed]
    return _dnat_rules.render(_dnat_rules.desired_rules(resolved, prefix, [], (), owner))


def instance(name, status="Running", owner=OWNER, config=None, started=STARTED):
    address = ADDRESSES.get(name, ["10.0.0.99"])[0]
    devices = {"eth0": {"type": "nic", "network": "lxdbr0", "ipv4.address": address},
               "root": {"type": "disk", "path": "/", "pool": "default"}}
    if name == "site":
        devices["onebox-vol-data"] = {"type": "disk", "pool": "default", "source": "unit-site-data", "path": "/srv/data"}
    network = {"lo": {"addresses": [{"family": "inet", "address": "127.0.0.1", "scope": "local"}]},
               "eth0": {"addresses": [{"family": "inet", "address": address, "scope": "global"},
                                      {"family": "inet6", "address": "fe80::1", "scope": "link"}]}}
    own = {OWNER_KEY: owner} if owner else {}
    return {"name": name, "status": status, "config": dict(own, **(config or {})),
            "expanded_config": dict(own, **(config or {})), "expanded_devices": devices, "last_used_at": started,
            "state": {"status": status, "network": network if status == "Running" else {},
                      "memory": {"usage": 40 << 20}}}


def listing(*names, **statuses):
    names = names or tuple(ADDRESSES)
    return [instance(n, statuses.get(n.replace("-", "_"), "Running"),
                     config={"limits.memory": "256MiB", "limits.cpu": "1"} if n == "site" else None) for n in names]


def status(services=None, lxd_listing=None, files=None, rules=None, certs=None, backups=None, described=True):
    containers = bi.read_containers(lxd_listing if lxd_listing is not None else listing(), OWNER, NOW)
    sites = bi.read_sites(site_files(services) if files is None else files)
    text = rules_text(services) if rules is None else rules
    forwards = bi.read_forwards(text, bi.owner_prefixes(text, OWNER))
    return bi.describe(OWNER, containers, sites, forwards, certs={"site.test": CERT} if certs is None else certs,
                       backups=backups, now=NOW, proxy="unit-proxy", box=box(services) if described else None,
                       daemon="LXD 5.0.2")


def service(info, name):
    return next(s for s in info["services"] if s["name"] == name)


# ---- reading ------------------------------------------------------------------------------------
def test_times_as_the_daemon_writes_them():
    assert bi.parse_time(STARTED) == pytest.approx(NOW - 7230 + 0.123456, abs=1e-5)
    assert bi.parse_time("2027-01-15T08:00:00+01:00") == NOW - 3600
    assert bi.parse_time("0001-01-01T00:00:00Z") is None and bi.parse_time("") is None and bi.parse_time(None) is None
    assert bi.iso(NOW) == "2027-01-15T08:00:00Z"
    assert [bi.duration(s) for s in (0, 45, 250, 7230, 3 * 86400 + 4 * 3600 + 59)] == ["0s", "45s", "4m 10s", "2h 0m", "3d 4h"]


def test_containers_are_the_owners_only_with_their_state_limits_uptime_and_volumes():
    found = bi.read_containers(listing("site", "vpn") + [instance("other", owner="someone"), instance("bare", owner=None)],
                               OWNER, NOW)
    assert sorted(found) == ["site", "vpn"]
    site = found["site"]
    assert site["addresses"] == ["10.0.0.10"] and site["static_address"] == "10.0.0.10"
    assert (site["cpus"], site["memory"], site["memory_usage"]) == ("1", "256MiB", 40 << 20)
    assert site["uptime_seconds"] == 7229 and site["started"] == "2027-01-15T05:59:30Z"
    assert site["volumes"] == [{"name": "unit-site-data", "path": "/srv/data", "readonly": False}]
    assert found["vpn"]["volumes"] == [] and found["vpn"]["cpus"] is None


def test_a_stopped_container_has_no_uptime_and_is_found_at_its_static_address():
    stopped = bi.read_containers([instance("vpn", status="Stopped")], OWNER, NOW)["vpn"]
    assert stopped["status"] == "Stopped" and stopped["uptime_seconds"] is None and stopped["addresses"] == []
    assert bi.address_of(stopped) == "10.0.0.13"


def test_the_sites_as_the_box_writes_them_say_where_each_domain_and_path_goes():
    sites = {site["name"]: site for site in bi.read_sites(site_files())}
    assert sorted(sites) == ["000-default", "site.test", "web-port8000", "web.test"]
    assert sites["000-default"]["default"] and sites["000-default"]["https_ports"] == [443]
    tls = sites["site.test"]
    assert tls["server_names"] == ["site.test"] and tls["https_ports"] == [443] and tls["http_ports"] == [80]
    assert tls["redirect"] and [(loc["path"], loc["backend"]) for loc in tls["locations"]] == [
        ("/", "http://10.0.0.10:80"), ("/web/", "http://web")]
    assert sites["web.test"]["upstreams"] == {"web": [{"address": "10.0.0.11:80", "down": False, "backup": False},
                                                      {"address": "10.0.0.12:80", "down": False, "backup": False}]}
    assert sites["web-port8000"]["server_names"] == ["_"] and sites["web-port8000"]["http_ports"] == [8000]


def test_nginx_words_quotes_and_comments():
    tree = bi.parse_nginx('# a comment\nserver { listen 80; add_header X "a b; c" always; location = /x { return 204; } }\n')
    assert tree[0][0] == "server"
    assert tree[0][2][1] == ("add_header", ["X", "a b; c", "always"], None)
    assert tree[0][2][2] == ("location", ["=", "/x"], [("return", ["204"], None)])
    site = bi.read_sites({"x.conf": "server { listen 80; server_name x.test; location = /x { return 204; } }"})[0]
    assert site["locations"] == [{"path": "/x", "exact": True, "backend": None, "root": None, "status": 204}]


def test_forwards_are_read_from_the_owners_chains_one_per_forward():
    text = rules_text() + rules_text([{"name": "x", "kind": "plain", "forwards": [{"port": 9999}]}], prefix="OTHER",
                                     owner="other")
    assert bi.owner_prefixes(text, OWNER) == ["UNIT"] and bi.owner_prefixes(text, "other") == ["OTHER"]
    assert bi.owner_prefixes(text, "nobody") == ["NOBODY"] and bi.owner_prefixes(text, OWNER, "GIVEN") == ["GIVEN"]
    forwards = bi.read_forwards(text, ["UNIT"])
    assert [(f["proto"], f["port"], f["address"], f["target_port"]) for f in forwards] == [
        ("tcp", "80", "10.0.0.14", "80"), ("tcp", "443", "10.0.0.14", "443"),
        ("tcp", "7000-7002", "10.0.0.13", "8000-8002"), ("tcp", "8000", "10.0.0.14", "8000"),
        ("udp", "51820", "10.0.0.13", "51820")]
    ranged = forwards[2]
    assert ranged["sources"] == ["192.0.2.0/24", "198.51.100.7"] and ranged["comment"] == "onebox vpn"


def test_a_forward_of_one_host_address():
    text = rules_text(extra=[{"proto": "tcp", "port": 2222, "target": "10.0.0.13", "target_port": 22,
                              "host_address": "203.0.113.5"}])
    forward = [f for f in bi.read_forwards(text, ["UNIT"]) if f["port"] == "2222"][0]
    assert forward["host_address"] == "203.0.113.5" and forward["target_port"] == "22"
    assert bi._forward_text(forward) == "host 203.0.113.5 tcp/2222 -> :22"


# ---- the services -------------------------------------------------------------------------------
def test_each_service_with_its_containers_and_what_reaches_them():
    info = status()
    assert [s["name"] for s in info["services"]] == ["site", "web", "vpn"]
    site, web, vpn = (service(info, n) for n in ("site", "web", "vpn"))
    assert [(e["url"], e["containers"]) for e in site["domains"]] == [("https://site.test/", ["site"])]
    assert site["domains"][0]["certificate"]["days_left"] == 60
    assert [c["name"] for c in web["containers"]] == ["web-1", "web-2"] and web["kind"] == "pool"
    assert [(e["url"], e["containers"]) for e in web["domains"]] == [
        ("https://site.test/web/", ["web-1", "web-2"]), ("http://web.test/", ["web-1", "web-2"])]
    assert [(e["port"], e["containers"]) for e in web["host_ports"]] == [(8000, ["web-1", "web-2"])]
    assert [(f["proto"], f["port"]) for f in vpn["forwards"]] == [("tcp", "7000-7002"), ("udp", "51820")]
    assert [(f["proto"], f["port"]) for f in info["proxy"]["forwards"]] == [("tcp", "80"), ("tcp", "443"), ("tcp", "8000")]
    assert info["unreached_forwards"] == [] and info["unreached_routes"] == []
    assert info["differences"] == {key: [] for key in info["differences"]}


def test_without_a_description_pool_members_are_grouped_under_their_pool():
    info = status(described=False)
    assert sorted(s["name"] for s in info["services"]) == ["site", "vpn", "web"]
    assert [c["name"] for c in service(info, "web")["containers"]] == ["web-1", "web-2"]
    assert service(info, "web")["kind"] is None and info["differences"] is None
    assert bi.group_containers(["app-1", "db", "web-1", "web-2", "x-proxy"], "x-proxy") == {
        "app-1": ["app-1"], "db": ["db"], "web": ["web-1", "web-2"]}
    # A container named as the pool itself keeps its name: a member is then nobody's guess.
    assert bi.group_containers(["web", "web-1", "web-2"], None) == {"web": ["web"], "web-1": ["web-1"], "web-2": ["web-2"]}


def test_what_differs_from_the_description():
    lxd_listing = listing("site", "web-1", "unit-proxy", vpn="Stopped") + [
        instance("vpn", status="Stopped"), instance("stray")]
    lxd_listing = [i for i in lxd_listing if not (i["name"] == "vpn" and i["status"] == "Running")]
    fewer = [dict(s, forwards=[{"proto": "udp", "port": 51820}]) if s["name"] == "vpn" else s for s in SERVICES]
    text = rules_text(fewer, extra=[{"proto": "tcp", "port": 2222, "target": "10.0.0.99"},
                                    {"proto": "tcp", "port": 2223, "target": "192.0.2.50"}])
    more = [dict(s, domains=["web.test", "www.web.test"]) if s["name"] == "web" else s for s in SERVICES]
    containers = bi.read_containers(lxd_listing, OWNER, NOW)
    info = bi.describe(OWNER, containers, bi.read_sites(site_files()), bi.read_forwards(text, ["UNIT"]), now=NOW,
                       proxy="unit-proxy", box=box(more))
    diff = info["differences"]
    assert diff["missing_containers"] == ["web-2"] and diff["stopped_containers"] == ["vpn"]
    assert diff["undescribed_containers"] == ["stray"]
    assert diff["missing_domains"] == ["www.web.test/"] and diff["undescribed_domains"] == []
    assert diff["missing_forwards"] == ["tcp/7000-7002"] and diff["undescribed_forwards"] == ["tcp/2222", "tcp/2223"]
    assert [c["status"] for c in service(info, "web")["containers"]] == ["Running", "Missing"]
    assert service(info, "stray")["described"] is False
    assert [f["port"] for f in service(info, "stray")["forwards"]] == ["2222"]
    assert [f["address"] for f in info["unreached_forwards"]] == ["192.0.2.50"]
    # The route under site.test still reaches web-1; web-2 is gone from the listing, not from the upstream.
    assert info["unreached_routes"][0]["unreached"] == ["10.0.0.12:80"]


def test_a_drained_pool_member_is_said_so():
    info = status(files=site_files(down=("web-2",)))
    web = service(info, "web")
    assert [c["drained"] for c in web["containers"]] == [False, True]
    assert web["domains"][1]["down"] == ["web-2"]
    assert "Running (drained)" in "\n".join(bi.table(info))


def test_the_proxy_not_read_shows_the_rest_and_misses_no_domain():
    containers = bi.read_containers(listing(unit_proxy="Stopped"), OWNER, NOW)
    text = rules_text()
    info = bi.describe(OWNER, containers, None, bi.read_forwards(text, ["UNIT"]), now=NOW, proxy="unit-proxy",
                       box=box(), notes=["the proxy could not be read"])
    assert info["proxy"]["sites_read"] is False and service(info, "site")["domains"] == []
    assert info["differences"]["missing_domains"] == [] and info["differences"]["stopped_containers"] == ["unit-proxy"]
    assert bi.table(info)[-1] == "the proxy could not be read"


def test_backups_as_the_agent_records_them():
    record = {"state": {"site": {"last_time": "2027-01-15T03:00:00Z", "ok": True, "last_good_time": "2027-01-15T03:00:00Z"},
                        "vpn": {"last_time": "2027-01-15T03:00:00Z", "ok": False, "error": "restic: no space",
                                "last_good_time": "2027-01-14T03:00:00Z"}},
              "included": {"site": True, "web": False, "vpn": True}}
    info = status(backups=record)
    assert service(info, "site")["backup"]["age_seconds"] == 5 * 3600
    assert service(info, "vpn")["backup"]["error"] == "restic: no space"
    assert service(info, "web")["backup"] == {"included": False, "last_time": None, "ok": None, "error": None,
                                              "last_good_time": None, "age_seconds": None}
    texts = [bi._backup_text(service(info, n)["backup"]) for n in ("site", "web", "vpn")]
    assert texts == ["2027-01-15 03:00 ok", "not backed up", "2027-01-15 03:00 FAILED, last good 2027-01-14 03:00"]
    assert bi._backup_text(info["proxy"]["backup"]) == "never"
    assert status()["services"][0]["backup"] is None  # no backups set up: no column either


# ---- the table ----------------------------------------------------------------------------------
def test_the_table_one_row_per_container_in_aligned_columns():
    lines = bi.table(status())
    assert lines[0] == ("box unit (LXD 5.0.2): 3 services, 5 containers (5 running), 2 domains, 5 forwards; "
                        "read 2027-01-15T08:00:00Z")
    headers = lines[1].split()
    assert headers == ["SERVICE", "CONTAINER", "STATE", "ADDRESS", "LIMITS", "UPTIME", "REACHED", "AT", "CERTIFICATE"]
    assert set(lines[2]) == {"-", " "}
    column = {name: lines[1].index(name) for name in ("CONTAINER", "ADDRESS", "REACHED AT", "CERTIFICATE")}
    rows = lines[3:]
    first = rows[0]
    assert first.startswith("site ") and first[column["CONTAINER"]:].startswith("site ")
    assert first[column["ADDRESS"]:].startswith("10.0.0.10") and "cpu 1, mem 256MiB" in first and "2h 0m" in first
    assert first[column["REACHED AT"]:].startswith("https://site.test/")
    assert first[column["CERTIFICATE"]:] == "self_signed 2027-03-16 (60 d)"
    web = [row for row in rows if row[column["CONTAINER"]:].startswith("web-") or row.startswith("web ")]
    assert web[0].startswith("web ") and web[0][column["CONTAINER"]:].startswith("web-1")
    reached = [row[column["REACHED AT"]:].split("  ")[0] for row in rows if row.strip()]
    assert "http://web.test/" in reached and "host tcp/8000 -> proxy -> :80" in reached
    assert "host tcp/7000-7002 -> :8000-8002 from 192.0.2.0/24, 198.51.100.7" in reached
    proxy = [row for row in rows if row.startswith("proxy ")][0]
    assert proxy[column["CONTAINER"]:].startswith("unit-proxy") and proxy[column["REACHED AT"]:] == "host tcp/80"
    assert lines[-1].startswith("as described")


def test_the_table_has_a_backup_column_only_with_backups_and_no_certificate_column_without_https():
    plain = [dict(SERVICES[0], tls="off")] + SERVICES[1:]
    lines = bi.table(status(plain, certs={}, backups={"state": {}, "included": {}}))
    assert "CERTIFICATE" not in lines[1] and lines[1].endswith("LAST BACKUP")
    assert "never" in lines[3]


def test_columns_take_multi_line_cells():
    assert bi.render_columns(["A", "BB"], [["x", ["1", "22"]], ["yyy", ""]]) == [
        "A    BB", "---  --", "x    1", "     22", "yyy"]
