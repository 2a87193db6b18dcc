"""_nginx_site: parsing a site; every refusal names the field and the value as the user wrote them."""
import copy

import pytest

from ansible_collections.homelab.onebox.plugins.module_utils._errors import ValidationError
from ansible_collections.homelab.onebox.plugins.module_utils import _nginx_site as ns
from unit.fake_nginx import APP


@pytest.mark.parametrize("value,words", [
    ("www.*.example.org", "only as the whole first label"), ("*foo.example.org", "only as the whole first label"),
    ("**.example.org", "only as the whole first label"), ("*", "'*' alone"), ("*.example.*", "not a wildcard"),
])
def test_server_name_forms_nginx_does_not_take_are_refused_saying_why(value, words):
    with pytest.raises(ValidationError) as err:
        ns.parse_site(dict(APP, server_names=[value]))
    assert err.value.field == "server_names[0]" and err.value.value == value and words in err.value.reason


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
        ns.parse_site(_with(path, value))
    assert err.value.field == field
    assert err.value.msg.startswith(field + ":")


@pytest.mark.parametrize("location", [
    {"path": "/x/"},
    {"path": "/x/", "backend": "http://a", "root": "/srv"},
    {"path": "/x/", "root": "/srv", "status": 404},
])
def test_location_needs_exactly_one_of_backend_root_status(location):
    with pytest.raises(ValidationError) as err:
        ns.parse_site(dict(APP, locations=[location], upstreams=[]))
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
        (dict(APP, tls={"certificate": "/c.pem", "key": "/k", "acme_webroot": "var/www"}), "tls.acme_webroot"),
        (dict(APP, tls={"certificate": "/c.pem", "key": "/k", "hsts_include_subdomains": "maybe"}),
         "tls.hsts_include_subdomains"),
        (dict(APP, upstreams=[{"name": "p", "method": "ip_hash", "servers": ["a:1", {"address": "b:1", "backup": True}]}]),
         "upstreams[0].servers[1].backup"),
        (dict(APP, upstreams=[{"name": "p", "servers": []}]), "upstreams[0].servers"),
        (dict(APP, bogus=1), "site"),
    ]
    for spec, field in cases:
        with pytest.raises(ValidationError) as err:
            ns.parse_site(copy.deepcopy(spec))
        assert err.value.field == field, (spec, err.value.msg)


def test_sites_unique_names_and_upstreams():
    with pytest.raises(ValidationError) as err:
        ns.parse_sites([APP, APP])
    assert err.value.field == "sites[1].name"
    other = dict(copy.deepcopy(APP), name="other")
    with pytest.raises(ValidationError) as err:
        ns.parse_sites([APP, other])
    assert err.value.field == "sites[1].upstreams" and "app_pool" in err.value.msg
    with pytest.raises(ValidationError) as err:
        ns.parse_sites([APP, {"name": "x", "server_names": ["a;b"], "locations": [{"path": "/", "status": 404}]}])
    assert err.value.field == "sites[1].server_names[0]"
