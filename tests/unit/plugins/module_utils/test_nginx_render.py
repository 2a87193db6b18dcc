"""_nginx_render: a parsed site -> its file's text (deterministic, marked, quiet), the catch-all."""
import copy

import pytest

from ansible_collections.homelab.onebox.plugins.module_utils import _nginx_render as nr
from ansible_collections.homelab.onebox.plugins.module_utils import _nginx_site as ns
from ansible_collections.homelab.onebox.plugins.module_utils import _nginx_values as nv
from ansible_collections.homelab.onebox.plugins.module_utils._errors import ValidationError
from unit.fake_nginx import APP


def render(spec):
    return nr.render_site(ns.parse_site(copy.deepcopy(spec)))


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


def test_render_is_deterministic_and_marked():
    text = render(APP)
    assert text == render(APP)
    assert text.startswith(nr.MARKER)
    assert nr.is_managed(text)
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
    assert "ssl_ciphers %s;" % ns.MODERN_CIPHERS in text
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
    text = nr.render_site(ns.parse_site(dict(APP, error_log="/e.log"), log_dir="/var/log/nginx/"))
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
    assert nr.render_site(ns.parse_site(nr.catch_all_site())) == CATCH_ALL_TEXT


@pytest.mark.parametrize("spec", [
    APP,
    dict(APP, tls={"certificate": "/etc/ssl/app.pem", "key": "/etc/ssl/app.key"}),  # redirect + TLS server
    dict(APP, tls={"certificate": "/c.pem", "key": "/c.key", "redirect": False}),
    nr.catch_all_site(sites=[{"name": "a", "tls": {"certificate": "/c", "key": "/k"}}]),
], ids=["plain", "tls-redirect", "tls-both", "catch-all-tls"])
def test_every_server_block_turns_server_tokens_off(spec):
    text = render(spec)
    assert text.count("server {") == text.count("\n    server_tokens off;\n") >= 1


def test_wildcard_site_renders_its_server_name():
    spec = {"name": nv.site_name_for("*.example.org"), "server_names": ["*.example.org"],
            "locations": [{"path": "/", "status": 204}]}
    text = render(spec)
    assert "    server_name *.example.org;" in text.splitlines()
    assert nr.file_name(ns.parse_site(spec)["name"]) == "_wildcard.example.org.conf"


def test_catch_all_site_answers_404_and_rejects_tls_only_when_a_site_has_tls():
    plain = nr.catch_all_site(sites=[{"name": "a"}])
    assert plain["server_names"] == ["_"] and plain["default_server"] is True and "tls" not in plain
    assert plain["locations"] == [{"path": "/", "status": 404}]
    text = nr.render_site(ns.parse_site(plain))
    assert "default_server" in text and "return 404" in text
    with_tls = nr.catch_all_site(https_listen=["8443"], sites=[{"name": "a", "tls": {"certificate": "/c", "key": "/k"}}])
    assert with_tls["tls"] == {"reject_handshake": True, "listen": ["8443"]}
    gone = nr.catch_all_site(sites=[{"name": "a", "state": "absent", "tls": {"certificate": "/c"}}])
    assert "tls" not in gone


def test_render_tls_acme_webroot_is_the_one_path_the_redirect_leaves():
    spec = dict(APP, tls={"certificate": "/c.pem", "key": "/c.key", "acme_webroot": "/var/www/acme"})
    text = render(spec)
    http, https = text.split("\nserver {")[1:]
    assert "location ^~ /.well-known/acme-challenge/ {\n        root /var/www/acme;" in http
    assert "location / {\n        return 301 https://$host$request_uri;" in http
    assert "acme-challenge" not in https
    both = render(dict(spec, tls=dict(spec["tls"], redirect=False)))
    assert both.count("server {") == 1 and "location ^~ /.well-known/acme-challenge/ {" in both


def test_render_hsts_flags_only_when_asked():
    tls = {"certificate": "/c.pem", "key": "/c.key", "hsts_max_age": 300}
    assert 'add_header Strict-Transport-Security "max-age=300" always;' in render(dict(APP, tls=tls))
    text = render(dict(APP, tls=dict(tls, hsts_include_subdomains=True, hsts_preload=True)))
    assert '"max-age=300; includeSubDomains; preload"' in text
    with pytest.raises(ValidationError, match="hsts_preload"):
        ns.parse_site(dict(APP, tls=dict(tls, hsts_preload=True)))
