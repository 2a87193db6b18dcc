"""nginx sites: validation, rendering, planning, and the transaction over a target.

The transaction tests use a real directory and real sh (the LXD target's scripts run locally
through a stand-in for LxdClient.exec); only nginx itself is replaced by a scripted answer."""
import copy
import os
import subprocess

import pytest

from ansible_collections.homelab.onebox.plugins.module_utils import _nginx as n
from ansible_collections.homelab.onebox.plugins.module_utils._errors import ValidationError
from ansible_collections.homelab.onebox.plugins.module_utils._lxd import ExecResult

APP = {
    "name": "app",
    "server_names": ["app.example.org", "*.app.example.org"],
    "listen": [80],
    "upstreams": [{"name": "app_pool", "method": "least_conn", "keepalive": 8,
                   "servers": ["web1:8000", {"address": "web2:8000", "weight": 2},
                               {"address": "web3:8000", "backup": True, "fail_timeout": "3s"}]}],
    "locations": [
        {"path": "/", "backend": "http://app_pool"},
        {"path": "/jenkins/", "backend": "http://jenkins:8080/jenkins/"},
        {"path": "/api/", "backend": "http://api:9000", "strip_prefix": True},
        {"path": "/static/", "root": "/srv/static"},
        {"path": "/health", "exact": True, "status": 204},
    ],
}


def render(spec):
    return n.render_site(n.normalise_site(copy.deepcopy(spec)))


def block(text, start):
    """The lines of the block that starts with ``start`` up to its closing brace."""
    lines = text.splitlines()
    i = next(i for i, line in enumerate(lines) if line.strip() == start)
    out = []
    for line in lines[i + 1:]:
        if line.strip() == "}":
            return [x.strip() for x in out]
        out.append(line)
    raise AssertionError("unterminated block %s" % start)


# ---- rendering ---------------------------------------------------------------------------------
def test_render_is_deterministic_and_marked():
    text = render(APP)
    assert text == render(APP)
    assert text.startswith(n.MARKER)
    assert n.is_managed(text)
    assert text.endswith("}\n")


def test_render_locations_keep_or_strip_prefix():
    text = render(APP)
    assert "proxy_pass http://app_pool;" in block(text, "location / {")
    assert "proxy_pass http://jenkins:8080/jenkins/;" in block(text, "location /jenkins/ {")
    assert "proxy_pass http://api:9000/;" in block(text, "location /api/ {")
    assert block(text, "location /static/ {") == ["root /srv/static;"]
    assert block(text, "location = /health {") == ["return 204;"]


def test_render_root_with_strip_prefix_is_alias():
    spec = dict(APP, locations=[{"path": "/docs/", "root": "/srv/docs/", "strip_prefix": True}], upstreams=[])
    assert block(render(spec), "location /docs/ {") == ["alias /srv/docs/;"]


def test_render_pool():
    lines = block(render(APP), "upstream app_pool {")
    assert lines == [
        "least_conn;",
        "server web1:8000 max_fails=1 fail_timeout=10s;",
        "server web2:8000 weight=2 max_fails=1 fail_timeout=10s;",
        "server web3:8000 max_fails=1 fail_timeout=3s backup;",
        "keepalive 8;",
    ]


@pytest.mark.parametrize("method,line", [("round_robin", None), ("least_conn", "least_conn;"), ("ip_hash", "ip_hash;")])
def test_render_methods(method, line):
    spec = copy.deepcopy(APP)
    spec["upstreams"][0]["method"] = method
    spec["upstreams"][0]["servers"] = ["web1:8000", "web2:8000"]
    lines = block(render(spec), "upstream app_pool {")
    assert (lines[0] == line) if line else lines[0].startswith("server ")


def test_render_default_proxy_headers_and_websocket():
    text = render(APP)
    lines = block(text, "location /jenkins/ {")
    for header in ('Host "$host"', 'X-Real-IP "$remote_addr"', 'X-Forwarded-For "$proxy_add_x_forwarded_for"',
                   'X-Forwarded-Proto "$scheme"'):
        assert "proxy_set_header %s;" % header in lines
    assert "proxy_set_header Upgrade $http_upgrade;" in lines
    assert "proxy_http_version 1.1;" in lines
    var = [line for line in lines if line.startswith("proxy_set_header Connection")][0].split()[-1].rstrip(";")
    assert "map $http_upgrade %s {" % var in text
    assert "client_max_body_size 10m;" in lines
    assert "proxy_connect_timeout 5s;" in lines
    assert "proxy_read_timeout 60s;" in lines


def test_render_proxy_overrides_per_site_and_location():
    spec = copy.deepcopy(APP)
    spec["proxy"] = {"headers": {"host": "$http_host", "X-Real-IP": None, "X-Extra": "a b $uri"},
                     "client_max_body_size": "100m", "read_timeout": "300s", "buffers": "8 16k",
                     "buffer_size": "16k", "buffering": False}
    spec["locations"][1]["proxy"] = {"headers": {"X-Extra": None}, "websocket": False, "connect_timeout": "2s"}
    text = render(spec)
    root = block(text, "location / {")
    assert 'proxy_set_header host "$http_host";' in root
    assert not any(line.startswith("proxy_set_header Host ") for line in root)
    assert not any("X-Real-IP" in line for line in root)
    assert 'proxy_set_header X-Extra "a b $uri";' in root
    assert {"client_max_body_size 100m;", "proxy_read_timeout 300s;", "proxy_buffers 8 16k;",
            "proxy_buffer_size 16k;", "proxy_buffering off;"} <= set(root)
    jenkins = block(text, "location /jenkins/ {")
    assert not any("X-Extra" in line for line in jenkins)
    assert 'proxy_set_header Connection "";' in jenkins
    assert "proxy_connect_timeout 2s;" in jenkins
    assert "proxy_read_timeout 300s;" in jenkins  # inherited from the site


def test_render_without_websocket_has_no_map():
    spec = dict(APP, proxy={"websocket": False})
    assert "map $http_upgrade" not in render(spec)


def test_render_tls_defaults_redirect_hsts_http2():
    spec = dict(APP, tls={"certificate": "/etc/ssl/app.pem", "key": "/etc/ssl/app.key"})
    text = render(spec)
    assert text.count("server {") == 2
    assert "return 301 https://$host$request_uri;" in text
    assert "listen 443 ssl http2;" in text
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in text
    assert "ssl_ciphers %s;" % n.MODERN_CIPHERS in text
    assert 'add_header Strict-Transport-Security "max-age=63072000" always;' in text
    assert "ssl_certificate /etc/ssl/app.pem;" in text


def test_render_tls_without_redirect_serves_both_and_custom_port():
    spec = dict(APP, listen=["127.0.0.1:8080"], default_server=True,
                tls={"certificate": "/c.pem", "key": "/c.key", "redirect": False, "hsts": False,
                     "http2": False, "listen": ["127.0.0.1:8443"]})
    text = render(spec)
    assert text.count("server {") == 1
    assert "listen 127.0.0.1:8080 default_server;" in text
    assert "listen 127.0.0.1:8443 ssl default_server;" in text
    assert "Strict-Transport-Security" not in text
    spec["tls"]["redirect"] = True
    assert "return 301 https://$host:8443$request_uri;" in render(spec)


def test_render_logs():
    text = render(dict(APP, access_log="/var/log/nginx/app.access.log", error_log="/var/log/nginx/app.error.log"))
    assert "access_log /var/log/nginx/app.access.log;" in text
    assert "error_log /var/log/nginx/app.error.log;" in text
    assert "access_log off;" in render(dict(APP, access_log="off"))


def test_render_log_dir_defaults():
    text = n.render_site(n.normalise_site(dict(APP, error_log="/e.log"), log_dir="/var/log/nginx/"))
    assert "access_log /var/log/nginx/app.access.log;" in text
    assert "error_log /e.log;" in text


def test_render_tls_reject_handshake_catch_all():
    spec = {"name": "000-default", "server_names": ["_"], "default_server": True,
            "locations": [{"path": "/", "status": 404}], "tls": {"reject_handshake": True}}
    text = render(spec)
    assert text.count("server {") == 1
    assert "listen 80 default_server;" in text and "listen 443 ssl default_server;" in text
    assert "ssl_reject_handshake on;" in text
    assert "ssl_certificate" not in text and "Strict-Transport-Security" not in text


@pytest.mark.parametrize("value,expected", [
    (80, "80"), ("8080", "8080"), ("127.0.0.1:8080", "127.0.0.1:8080"), ("[::]:80", "[::]:80"), ("*:80", "*:80")])
def test_listen_forms(value, expected):
    assert n.listen(value, "listen[0]") == expected


@pytest.mark.parametrize("value", ["_", "a.example.org", "*.example.org", ".example.org", "www.example.*", "localhost"])
def test_server_name_forms(value):
    assert n.server_name(value, "server_names[0]") == value


@pytest.mark.parametrize("value,words", [
    ("www.*.example.org", "only as the whole first label"), ("*foo.example.org", "only as the whole first label"),
    ("**.example.org", "only as the whole first label"), ("*", "'*' alone"), ("*.example.*", "not a wildcard"),
])
def test_server_name_forms_nginx_does_not_take_are_refused_saying_why(value, words):
    with pytest.raises(ValidationError) as err:
        n.normalise_site(dict(APP, server_names=[value]))
    assert err.value.field == "server_names[0]" and err.value.value == value and words in err.value.reason


# ---- a quiet proxy: no server block names nginx's version --------------------------------------
CATCH_ALL_TEXT = """\
# Managed by homelab.onebox.nginx_site (site 000-default). Do not edit: changes are overwritten.

server {
    listen 80 default_server;
    server_name _;
    server_tokens off;
    client_max_body_size 10m;

    location / {
        return 404;
    }
}
"""


def test_catch_all_default_server_text_is_quiet():
    assert n.render_site(n.normalise_site(n.catch_all_site())) == CATCH_ALL_TEXT


@pytest.mark.parametrize("spec", [
    APP,
    dict(APP, tls={"certificate": "/etc/ssl/app.pem", "key": "/etc/ssl/app.key"}),  # redirect + TLS server
    dict(APP, tls={"certificate": "/c.pem", "key": "/c.key", "redirect": False}),
    n.catch_all_site(sites=[{"name": "a", "tls": {"certificate": "/c", "key": "/k"}}]),
], ids=["plain", "tls-redirect", "tls-both", "catch-all-tls"])
def test_every_server_block_turns_server_tokens_off(spec):
    text = render(spec)
    assert text.count("server {") == text.count("\n    server_tokens off;\n") >= 1


# ---- wildcard domains -> site and file names ---------------------------------------------------
@pytest.mark.parametrize("domain,name", [
    ("example.org", "example.org"), ("*.example.org", "_wildcard.example.org"),
    ("*.www.example.org", "_wildcard.www.example.org"), ("wildcard.example.org", "wildcard.example.org"),
])
def test_site_name_for_a_domain_is_readable_and_a_plain_file_name(domain, name):
    assert n.site_name_for(domain) == name
    assert n.site_name(name) == name  # a valid site name, so a plain file name
    assert n.file_name(name) == name + ".conf"


def test_a_wildcard_and_an_exact_name_never_share_a_file():
    # No DNS name holds '_', so no exact name maps to a '_wildcard.' name.
    names = ["example.org", "*.example.org", "wildcard.example.org", "*.wildcard.example.org",
             "*.org", "org"]
    mapped = [n.site_name_for(d) for d in names]
    assert len(set(mapped)) == len(mapped)


def test_long_domains_are_shortened_uniquely():
    label = "a" * 63
    exact = ".".join([label, label, "example", "org"])
    longer = "b." + exact
    mapped = {d: n.site_name_for(d) for d in (exact, "*." + exact, longer, "*." + longer)}
    assert len(set(mapped.values())) == 4
    for domain, name in mapped.items():
        assert len(name) == n.SITE_NAME_MAX and n.site_name(name) == name
        assert name[:-13] == n.site_name_for(domain)[:-13] and name[-13] == "_"
    assert mapped["*." + exact].startswith("_wildcard.")
    short = "%s.example.org" % label
    assert n.site_name_for(short) == short  # 75 characters: kept as it is


def test_wildcard_site_renders_its_server_name():
    spec = {"name": n.site_name_for("*.example.org"), "server_names": ["*.example.org"],
            "locations": [{"path": "/", "status": 204}]}
    text = render(spec)
    assert "    server_name *.example.org;" in text.splitlines()
    assert n.plan({}, [n.normalise_site(spec)])[0]["file"] == "_wildcard.example.org.conf"


@pytest.mark.parametrize("value", [".hidden", "-option", "*.example.org", "a" * 101])
def test_site_names_that_are_no_plain_file_name_are_refused(value):
    with pytest.raises(ValidationError) as err:
        n.site_name(value, "sites[0].name")
    assert err.value.field == "sites[0].name"


# ---- validation: every rejection names field and value -----------------------------------------
def _with(path, value):
    spec = copy.deepcopy(APP)
    node = spec
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return spec


BAD = [
    (("server_names", 0), "a.org;", "server_names[0]"),
    (("server_names", 0), "a.org{", "server_names[0]"),
    (("server_names", 0), "a.org}", "server_names[0]"),
    (("server_names", 0), 'a"b.org', "server_names[0]"),
    (("server_names", 0), "a'b.org", "server_names[0]"),
    (("server_names", 0), "a b.org", "server_names[0]"),
    (("server_names", 0), "a.org\n", "server_names[0]"),
    (("server_names", 0), "a.org\nreturn 200", "server_names[0]"),
    (("server_names", 0), "~^(?<x>.+)$", "server_names[0]"),
    (("locations", 0, "path"), "/a;b", "locations[0].path"),
    (("locations", 0, "path"), "/a{", "locations[0].path"),
    (("locations", 0, "path"), "/a}", "locations[0].path"),
    (("locations", 0, "path"), '/a"', "locations[0].path"),
    (("locations", 0, "path"), "/a b", "locations[0].path"),
    (("locations", 0, "path"), "/a\n", "locations[0].path"),
    (("locations", 0, "path"), "a/", "locations[0].path"),
    (("locations", 1, "backend"), "http://jenkins:8080/x;y", "locations[1].backend"),
    (("locations", 1, "backend"), "ftp://jenkins", "locations[1].backend"),
    (("locations", 1, "backend"), "http://jen kins", "locations[1].backend"),
    (("locations", 1, "backend"), "http://jenkins:99999", "locations[1].backend"),
    (("name",), "a/b", "name"),
    (("name",), "..", "name"),
    (("name",), "../etc", "name"),
    (("name",), "a..b", "name"),
    (("name",), "", "name"),
    (("listen", 0), 0, "listen[0]"),
    (("listen", 0), 65536, "listen[0]"),
    (("listen", 0), "70000", "listen[0]"),
    (("listen", 0), "1.2.3.4:0", "listen[0]"),
    (("listen", 0), "80;", "listen[0]"),
    (("upstreams", 0, "method"), "random_walk", "upstreams[0].method"),
    (("upstreams", 0, "servers", 0), "web1:0", "upstreams[0].servers[0].address"),
    (("upstreams", 0, "servers", 0), "web1;:80", "upstreams[0].servers[0].address"),
    (("upstreams", 0, "name"), "a b", "upstreams[0].name"),
    (("locations", 3, "root"), "relative/dir", "locations[3].root"),
    (("locations", 3, "root"), "/srv/a;b", "locations[3].root"),
    (("proxy",), {"headers": {"X-A": 'x"; evil'}}, "proxy.headers.X-A"),
    (("proxy",), {"headers": {"X A": "x"}}, "proxy.headers"),
    (("proxy",), {"read_timeout": "5 s"}, "proxy.read_timeout"),
    (("proxy",), {"client_max_body_size": "10m;"}, "proxy.client_max_body_size"),
    (("access_log",), "/var/log/a b", "access_log"),
]


@pytest.mark.parametrize("path,value,field", BAD, ids=["%s=%r" % (f, v) for _p, v, f in BAD])
def test_bad_input_names_field_and_value(path, value, field):
    with pytest.raises(ValidationError) as err:
        n.normalise_site(_with(path, value))
    assert err.value.field == field
    assert err.value.msg.startswith(field + ":")


@pytest.mark.parametrize("location", [
    {"path": "/x/"},
    {"path": "/x/", "backend": "http://a", "root": "/srv"},
    {"path": "/x/", "root": "/srv", "status": 404},
])
def test_location_needs_exactly_one_of_backend_root_status(location):
    with pytest.raises(ValidationError) as err:
        n.normalise_site(dict(APP, locations=[location], upstreams=[]))
    assert err.value.field == "locations[0]"
    assert "exactly one of backend" in err.value.msg


def test_other_rejections():
    cases = [
        (dict(APP, server_names=[]), "server_names"),
        (dict(APP, locations=[]), "locations"),
        (dict(APP, locations=[{"path": "/a", "backend": "http://a", "strip_prefix": True}], upstreams=[]),
         "locations[0].path"),
        (dict(APP, locations=[{"path": "/a/", "backend": "http://a/b/", "strip_prefix": True}], upstreams=[]),
         "locations[0].strip_prefix"),
        (dict(APP, locations=[{"path": "/", "backend": "http://app_pool:80"}]), "locations[0].backend"),
        (dict(APP, locations=[{"path": "/", "status": 204}, {"path": "/", "status": 204}], upstreams=[]),
         "locations[1].path"),
        (dict(APP, tls={"certificate": "/c.pem"}), "tls.key"),
        (dict(APP, tls={"certificate": "/c.pem", "key": "/k", "protocols": ["SSLv3"]}), "tls.protocols[0]"),
        (dict(APP, upstreams=[{"name": "p", "method": "ip_hash", "servers": ["a:1", {"address": "b:1", "backup": True}]}]),
         "upstreams[0].servers[1].backup"),
        (dict(APP, upstreams=[{"name": "p", "servers": []}]), "upstreams[0].servers"),
        (dict(APP, bogus=1), "site"),
    ]
    for spec, field in cases:
        with pytest.raises(ValidationError) as err:
            n.normalise_site(copy.deepcopy(spec))
        assert err.value.field == field, (spec, err.value.msg)


def test_sites_unique_names_and_upstreams():
    with pytest.raises(ValidationError) as err:
        n.normalise_sites([APP, APP])
    assert err.value.field == "sites[1].name"
    other = dict(copy.deepcopy(APP), name="other")
    with pytest.raises(ValidationError) as err:
        n.normalise_sites([APP, other])
    assert err.value.field == "sites[1].upstreams" and "app_pool" in err.value.msg
    with pytest.raises(ValidationError) as err:
        n.normalise_sites([APP, {"name": "x", "server_names": ["a;b"], "locations": [{"path": "/", "status": 404}]}])
    assert err.value.field == "sites[1].server_names[0]"


# ---- planning ------------------------------------------------------------------------------------
def test_plan_create_update_unchanged_remove_prune():
    app = n.normalise_site(copy.deepcopy(APP))
    text = n.render_site(app)
    other = n.normalise_site({"name": "other", "server_names": ["o.org"], "locations": [{"path": "/", "status": 404}]})
    gone = {"name": "gone", "state": "absent"}
    assert [c["action"] for c in n.plan({}, [app, other])] == ["created", "created"]
    current = {"app.conf": text, "other.conf": n.render_site(other).replace("404", "403"),
               "gone.conf": n.marker_line("gone"), "old.conf": n.marker_line("old"), "hand.conf": "server {}\n"}
    changes = n.plan(current, [app, other, n.normalise_site(gone)])
    assert [(c["file"], c["action"]) for c in changes] == [("gone.conf", "removed"), ("other.conf", "updated")]
    pruned = n.plan(current, [app, other], prune=True)
    assert [(c["file"], c["action"]) for c in pruned] == [
        ("gone.conf", "removed"), ("old.conf", "removed"), ("other.conf", "updated")]
    assert n.plan({"app.conf": text}, [app]) == []


def test_plan_never_touches_unmarked_files():
    app = n.normalise_site(copy.deepcopy(APP))
    for site in (app, n.normalise_site({"name": "app", "state": "absent"})):
        with pytest.raises(n.NginxError) as err:
            n.plan({"app.conf": "# mine\nserver {}\n"}, [site])
        assert "not written by homelab.onebox.nginx_site" in err.value.msg


def test_included_files():
    dump = "# configuration file /etc/nginx/nginx.conf:\nx\n# configuration file /etc/nginx/conf.d/a.conf:\n"
    assert n.included_files(dump) == {"/etc/nginx/nginx.conf", "/etc/nginx/conf.d/a.conf"}


# ---- the transaction, on a real directory ---------------------------------------------------------
class ShellLxd:
    """Stands in for LxdClient: exec runs argv here, files are local paths."""

    def __init__(self, nginx):
        self.nginx = nginx
        self.calls = []

    def instance(self, name):
        return {"name": name}

    def exec(self, name, argv, timeout=60):
        self.calls.append(argv[:2])
        if argv[0] == "nginx":
            return ExecResult(*self.nginx(argv))
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        return ExecResult(proc.returncode, proc.stdout, proc.stderr)

    def push_file(self, name, path, data, mode=0o644):
        with open(path, "wb") as handle:
            handle.write(data)


class HostModule:
    def __init__(self, nginx):
        self.nginx = nginx

    def run_command(self, argv):
        return self.nginx(argv)

    def atomic_move(self, src, dst):
        os.rename(src, dst)


class FakeNginx:
    """Answers -T with a dump listing the directory's *.conf files, or fails when told to."""

    def __init__(self, conf_dir):
        self.conf_dir = conf_dir
        self.fail = None
        self.include = True
        self.tests = 0
        self.reloads = 0
        self.seen = None

    def __call__(self, argv):
        if "-T" in argv:
            self.tests += 1
            self.seen = {f: open(os.path.join(self.conf_dir, f)).read()
                         for f in os.listdir(self.conf_dir) if f.endswith(".conf")}
            if self.fail:
                return 1, "", self.fail
            files = sorted(self.seen) if self.include else []
            return 0, "".join("# configuration file %s:\n" % os.path.join(self.conf_dir, f) for f in files), ""
        self.reloads += 1
        return 0, "", ""


@pytest.fixture(params=["host", "lxd"])
def target(request, tmp_path):
    conf = tmp_path / "conf.d"
    conf.mkdir()
    fake = FakeNginx(str(conf))
    if request.param == "host":
        tgt = n.HostTarget(HostModule(fake), str(conf), ["nginx", "-T"], ["nginx", "-s", "reload"])
    else:
        tgt = n.LxdTarget(ShellLxd(fake), "proxy", str(conf), ["nginx", "-T"], ["nginx", "-s", "reload"])
    tgt.fake = fake
    return tgt


def snapshot(directory):
    return {f: open(os.path.join(directory, f), "rb").read() for f in sorted(os.listdir(directory))}


def sites(*names, status=404):
    return [n.normalise_site({"name": name, "server_names": ["%s.org" % name],
                              "locations": [{"path": "/", "status": status}]}) for name in names]


def converge(target, desired, prune=False):
    current, leftovers = target.read()
    changes = n.plan(current, desired, prune=prune)
    n.apply(target, changes, leftovers)
    return changes


def test_read_sees_conf_files_and_leftovers(target):
    d = target.conf_dir
    for name, text in (("a.conf", "one\ntwo\n"), ("b.conf", "no newline"), ("c.txt", "x"),
                       (".onebox-a.conf.new", "x"), ("empty.conf", "")):
        with open(os.path.join(d, name), "w") as handle:
            handle.write(text)
    os.mkdir(os.path.join(d, "dir.conf"))
    os.symlink("a.conf", os.path.join(d, "link.conf"))
    files, leftovers = target.read()
    assert files == {"a.conf": "one\ntwo\n", "b.conf": "no newline", "empty.conf": ""}
    assert leftovers == [".onebox-a.conf.new"]


def test_apply_creates_updates_removes_with_one_test_and_one_reload(target):
    d = target.conf_dir
    with open(os.path.join(d, "hand.conf"), "w") as handle:
        handle.write("# hand-written\n")
    converge(target, sites("a", "b", "c"))
    assert (target.fake.tests, target.fake.reloads) == (1, 1)
    assert sorted(os.listdir(d)) == ["a.conf", "b.conf", "c.conf", "hand.conf"]
    assert converge(target, sites("a", "b", "c")) == []
    assert (target.fake.tests, target.fake.reloads) == (1, 1)
    changes = converge(target, sites("a", status=403) + sites("b"), prune=True)
    assert [(c["file"], c["action"]) for c in changes] == [("a.conf", "updated"), ("c.conf", "removed")]
    assert (target.fake.tests, target.fake.reloads) == (2, 2)
    assert sorted(os.listdir(d)) == ["a.conf", "b.conf", "hand.conf"]
    assert "return 403;" in open(os.path.join(d, "a.conf")).read()


def test_failed_test_restores_everything(target):
    d = target.conf_dir
    converge(target, sites("a", "b"))
    with open(os.path.join(d, "hand.conf"), "w") as handle:
        handle.write("# hand-written\n")
    before = snapshot(d)
    target.fake.fail = 'nginx: [emerg] host not found in upstream "nope:80" in x.conf:5'
    current, leftovers = target.read()
    changes = n.plan(current, sites("a", status=403) + sites("new"), prune=True)
    assert [c["action"] for c in changes] == ["updated", "removed", "created"]
    with pytest.raises(n.NginxError) as err:
        n.apply(target, changes, leftovers)
    assert 'host not found in upstream "nope:80"' in err.value.msg
    # nginx tested the new set, then everything came back byte for byte; no reload
    assert "return 403;" in target.fake.seen["a.conf"] and "b.conf" not in target.fake.seen
    assert snapshot(d) == before
    assert target.fake.reloads == 1


def test_files_not_included_roll_back(target):
    d = target.conf_dir
    before = snapshot(d)
    target.fake.include = False
    with pytest.raises(n.NginxError) as err:
        converge(target, sites("a"))
    assert "is not included" in err.value.msg
    assert snapshot(d) == before


def test_leftovers_of_a_crashed_run_are_cleared(target):
    d = target.conf_dir
    for name in (".onebox-a.conf.new", ".onebox-a.conf.old"):
        with open(os.path.join(d, name), "w") as handle:
            handle.write("stale")
    converge(target, sites("a"))
    assert sorted(os.listdir(d)) == ["a.conf"]


def test_lxd_target_uses_few_execs(tmp_path):
    conf = tmp_path / "conf.d"
    conf.mkdir()
    fake = FakeNginx(str(conf))
    lxd = ShellLxd(fake)
    tgt = n.LxdTarget(lxd, "proxy", str(conf), ["nginx", "-T"], ["nginx", "-s", "reload"])
    converge(tgt, sites(*["s%02d" % i for i in range(20)]))
    # read, swap, test, remove backups (none: all new, so skipped), reload
    assert len(lxd.calls) <= 5, lxd.calls


def test_catch_all_site_answers_404_and_rejects_tls_only_when_a_site_has_tls():
    plain = n.catch_all_site(sites=[{"name": "a"}])
    assert plain["server_names"] == ["_"] and plain["default_server"] is True and "tls" not in plain
    assert plain["locations"] == [{"path": "/", "status": 404}]
    text = n.render_site(n.normalise_site(plain))
    assert "default_server" in text and "return 404" in text
    with_tls = n.catch_all_site(https_listen=["8443"], sites=[{"name": "a", "tls": {"certificate": "/c", "key": "/k"}}])
    assert with_tls["tls"] == {"reject_handshake": True, "listen": ["8443"]}
    gone = n.catch_all_site(sites=[{"name": "a", "state": "absent", "tls": {"certificate": "/c"}}])
    assert "tls" not in gone
