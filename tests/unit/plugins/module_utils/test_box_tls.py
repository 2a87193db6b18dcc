"""HTTPS of the box description: the box's tls options and a service's tls checked, and what they
make of the proxy (sites, certificates, forwards, volume, files)."""
import json

import pytest

from ansible_collections.homelab.onebox.plugins.module_utils import _box_tls as bt
from ansible_collections.homelab.onebox.plugins.module_utils._box import parse_box
from ansible_collections.homelab.onebox.plugins.module_utils._errors import ValidationError

from unit.plugins.module_utils.test_box import BOX, JENKINS, POOL, SITE

TLS = {"email": "admin@example.org"}
CERT = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
KEY = "-----BEGIN PRIVATE KEY-----\nsecret-key\n-----END PRIVATE KEY-----"
HOOK = "#!/bin/sh\necho set\n"


def box(services=None, tls="default", **options):
    return parse_box(BOX if services is None else services, dict(options, tls=TLS if tls == "default" else tls))


def error(services=None, tls="default"):
    with pytest.raises(ValidationError) as err:
        box(services, tls)
    return err.value


def sites_of(parts):
    return {s["name"]: s for s in parts.sites()}


def test_without_tls_options_the_box_is_plain_http_and_keeps_no_certificates():
    parts = box(tls=None)
    assert not parts.tls_active and all("tls" not in s for s in parts.sites())
    assert [f["port"] for f in parts.forwards() if f["target"] == "onebox-proxy"] == [80, 8000]
    proxy = [i for i in parts.instances() if i["name"] == "onebox-proxy"][0]
    assert "devices" not in proxy


def test_a_proxy_without_tls_drops_the_agent_and_its_timer_but_not_the_certificates():
    item = [i for i in box(tls=None).provision() if i["name"] == "onebox-proxy"][0]
    gone = {f["path"] for f in item["files"] if f.get("state") == "absent"}
    assert {bt.AGENT_PATH, bt.CONFIG_PATH, "/etc/systemd/system/onebox-tls-renew.timer",
            "/etc/systemd/system/timers.target.wants/onebox-tls-renew.timer"} <= gone
    assert "certbot" not in item["packages"] and not any("letsencrypt" in path for path in gone)


def test_tls_options_make_every_domain_https_with_its_own_certificate():
    parts = box()
    sites = sites_of(parts)
    for name in ("a.example.test", "app.example.test", "pool.example.test"):
        tls = sites[name]["tls"]
        assert tls["certificate"] == "/etc/nginx/onebox-tls/%s/fullchain.pem" % name
        assert tls["key"] == "/etc/nginx/onebox-tls/%s/privkey.pem" % name
        assert tls["acme_webroot"] == bt.WEBROOT and tls["redirect"] and tls["hsts"]
    assert "tls" not in sites["web-port8000"]  # a host port has no name to certify
    assert parts.tls.certificates() == [
        {"name": d, "domains": [d], "mode": "acme", "challenge": "http"}
        for d in ("a.example.test", "app.example.test", "pool.example.test")]
    assert [(f["port"], f["comment"]) for f in parts.forwards() if f["target"] == "onebox-proxy"] == [
        (80, "onebox proxy http"), (443, "onebox proxy https"), (8000, "onebox web")]


def test_the_proxy_mounts_its_certificate_volume_and_gets_the_agent_and_certbot():
    parts = box(owner="mybox", volume_pool="fast", tls_agent="#!/usr/bin/python3\n")
    proxy = [i for i in parts.instances() if i["name"] == "mybox-proxy"][0]
    assert proxy["devices"] == {"onebox-tls": {"type": "disk", "pool": "fast", "source": "mybox-proxy-tls",
                                               "path": "/etc/letsencrypt"}}
    item = [i for i in parts.provision() if i["name"] == "mybox-proxy"][0]
    assert item["packages"] == ["nginx-light", "openssl", "certbot"]
    files = {f["path"]: f for f in item["files"]}
    assert files[bt.AGENT_PATH]["content"] == "#!/usr/bin/python3\n" and files[bt.AGENT_PATH]["mode"] == "0755"
    config = json.loads(files[bt.CONFIG_PATH]["content"])
    assert config["owner"] == "mybox" and config["email"] == "admin@example.org"
    assert config["directory"] == bt.LETS_ENCRYPT and config["ca_bundle"] is None and config["dns"] is None
    assert [c["name"] for c in config["certs"]] == ["a.example.test", "app.example.test", "pool.example.test"]
    # None of the TLS files restarts nginx; the ones not used are declared absent (a change of options removes them).
    assert all(files[p]["restart"] is False for p in files if p.startswith(("/etc/onebox-tls", "/usr/local")))
    assert files[bt.CA_BUNDLE_PATH]["state"] == files[bt.DNS_AUTH_PATH]["state"] == "absent"


def test_a_route_under_a_domain_shares_its_site_and_certificate():
    parts = box([dict(SITE, domains=["app.example.test"]), JENKINS])
    assert [c["name"] for c in parts.tls.certificates()] == ["app.example.test"]
    site = sites_of(parts)["app.example.test"]
    assert [loc["path"] for loc in site["locations"]] == ["/", "/jenkins/"] and site["tls"]


def test_service_modes_off_self_signed_and_provided():
    services = [dict(SITE, tls="off"), dict(POOL, tls="self_signed"),
                {"name": "shop", "domains": ["shop.example.test"], "tls": {"mode": "provided", "certificate": CERT,
                                                                           "key": KEY}}]
    parts = box(services, ca_bundle=None)
    assert "tls" not in sites_of(parts)["a.example.test"]
    modes = {c["name"]: c["mode"] for c in parts.tls.certificates()}
    assert modes == {"pool.example.test": "self_signed", "shop.example.test": "provided"}
    assert "acme_webroot" not in sites_of(parts)["shop.example.test"]["tls"]
    files = {f["path"]: f for f in [i for i in parts.provision() if i["name"] == "onebox-proxy"][0]["files"]}
    assert files["/etc/onebox-tls/provided/shop.example.test/privkey.pem"]["mode"] == "0600"
    assert files["/etc/onebox-tls/provided/shop.example.test/privkey.pem"]["content"] == KEY + "\n"
    item = [i for i in parts.provision() if i["name"] == "onebox-proxy"][0]
    assert "certbot" not in item["packages"]  # nothing to ask a CA for


def test_default_off_and_a_service_asking_for_acme():
    parts = box([SITE, dict(POOL, tls="acme")], tls=dict(TLS, default="off"))
    assert [c["name"] for c in parts.tls.certificates()] == ["pool.example.test"]


def test_self_signed_and_provided_need_no_box_options_but_acme_does():
    assert box([dict(SITE, tls="self_signed")], tls=None).tls.enabled
    err = error([dict(SITE, tls="acme")], tls=None)
    assert err.field == "services[site-a].tls.mode" and "onebox_tls" in err.msg


@pytest.mark.parametrize("services, tls, field, value", [
    ([dict(SITE, tls="https")], TLS, "services[site-a].tls.mode", "https"),
    ([dict(SITE, tls={"mode": "provided", "certificate": CERT})], TLS, "services[site-a].tls.key", None),
    ([dict(SITE, tls={"mode": "provided", "certificate": "not pem", "key": KEY})], TLS,
     "services[site-a].tls.certificate", "********"),
    ([dict(SITE, tls={"mode": "acme", "key": KEY})], TLS, "services[site-a].tls.key", "********"),
    ([dict(SITE, tls={"mode": "acme", "challenge": "dns"})], TLS, "services[site-a].tls.challenge", "dns"),
    ([dict(SITE, domains=["*.example.test"])], TLS, "services[site-a].domains[0]", "*.example.test"),
    ([{"name": "vpn", "kind": "plain", "command": "x", "tls": "acme"}], TLS, "services[vpn].tls", "acme"),
    ([SITE], dict(TLS, email="admin"), "tls.email", "admin"),
    ([SITE], dict(TLS, directory="http://acme.test/dir"), "tls.directory", "http://acme.test/dir"),
    ([SITE], dict(TLS, directory="https://acme.test/dir", staging=True), "tls.staging", True),
    ([SITE], dict(TLS, ca_bundle="nope"), "tls.ca_bundle", "********"),
    ([SITE], dict(TLS, key_type="dsa"), "tls.key_type", "dsa"),
    ([SITE], dict(TLS, default="provided"), "tls.default", "provided"),
    ([SITE], dict(TLS, hsts="maybe"), "tls.hsts", "maybe"),
    ([SITE], dict(TLS, redirect="maybe"), "tls.redirect", "maybe"),
    ([SITE], dict(TLS, hsts_max_age=-1), "tls.hsts_max_age", -1),
    ([SITE], dict(TLS, dns={"plugin": "rfc2136", "credentials": "x", "propagation_seconds": 99999}),
     "tls.dns.propagation_seconds", 99999),
    ([dict(SITE, tls={"mode": "acme", "challenge": "tls-alpn"})], TLS, "services[site-a].tls.challenge", "tls-alpn"),
    ([dict(SITE, tls={"mode": "acme", "colour": "blue"})], TLS, "services[site-a].tls", None),
    ([SITE], dict(TLS, hsts_preload=True), "tls.hsts_preload", True),
    ([SITE], dict(TLS, dns={"auth_hook": "echo"}), "tls.dns.auth_hook", "echo"),
    ([SITE], dict(TLS, dns={"plugin": "Cloud Flare", "credentials": "x"}), "tls.dns.plugin", "Cloud Flare"),
    ([SITE], dict(TLS, dns={"plugin": "rfc2136"}), "tls.dns.credentials", None),
    ([SITE], dict(TLS, renew_calendar="daily\nExecStart=/bin/sh"), "tls.renew_calendar", "daily\nExecStart=/bin/sh"),
    ([SITE], dict(TLS, colour="blue"), "tls", None),
])
def test_bad_tls_input_names_the_field_and_value(services, tls, field, value):
    err = error(services, tls)
    assert err.field == field
    if value is not None:
        assert err.value == value


def test_a_wildcard_domain_takes_dns_01_from_the_box_hooks():
    parts = box([dict(SITE, domains=["*.wild.example.test"])], tls=dict(TLS, dns={"auth_hook": HOOK, "cleanup_hook": HOOK}))
    assert parts.tls.certificates() == [{"name": "_wildcard.wild.example.test", "domains": ["*.wild.example.test"],
                                         "mode": "acme", "challenge": "dns"}]
    assert "acme_webroot" not in parts.sites()[0]["tls"]
    files = {f["path"]: f for f in [i for i in parts.provision() if i["name"] == "onebox-proxy"][0]["files"]}
    assert files[bt.DNS_AUTH_PATH]["content"] == HOOK and files[bt.DNS_AUTH_PATH]["mode"] == "0700"
    assert json.loads(files[bt.CONFIG_PATH]["content"])["dns"] == {"auth_hook": bt.DNS_AUTH_PATH,
                                                                   "cleanup_hook": bt.DNS_CLEANUP_PATH}


def test_a_dns_plugin_installs_its_package_and_keeps_its_credentials_secret():
    tls = dict(TLS, dns={"plugin": "rfc2136", "credentials": "dns_rfc2136_secret = s3cret\n", "propagation_seconds": 5})
    parts = box([dict(SITE, tls={"challenge": "dns"})], tls=tls)
    item = [i for i in parts.provision() if i["name"] == "onebox-proxy"][0]
    assert "python3-certbot-dns-rfc2136" in item["packages"]
    files = {f["path"]: f for f in item["files"]}
    assert files[bt.DNS_CREDENTIALS_PATH]["mode"] == "0600"
    assert json.loads(files[bt.CONFIG_PATH]["content"])["dns"]["propagation_seconds"] == 5
    assert bt.tls_secrets(tls) == ["dns_rfc2136_secret = s3cret\n"]


def test_staging_switch_and_hsts_options_reach_the_sites():
    parts = box([SITE], tls=dict(TLS, staging=True, hsts_max_age=300, hsts_include_subdomains=True, redirect=False))
    assert json.loads(parts.tls.config("o"))["directory"] == bt.LETS_ENCRYPT_STAGING
    tls = parts.sites()[0]["tls"]
    assert tls["hsts_max_age"] == 300 and tls["hsts_include_subdomains"] and not tls["redirect"]


def test_routes_under_one_unclaimed_domain_must_agree_on_tls():
    services = [dict(JENKINS, routes=[{"domain": "x.example.test", "path": "/a/"}]),
                dict(JENKINS, name="other", routes=[{"domain": "x.example.test", "path": "/b/"}], tls="off")]
    assert error(services).field == "services[other].tls"


def test_routes_under_a_claimed_domain_take_its_certificate_whatever_their_own_tls():
    services = [dict(SITE, domains=["app.example.test"]), dict(JENKINS, tls="off"),
                dict(JENKINS, name="other", routes=[{"domain": "app.example.test", "path": "/other/"}])]
    parts = box(services)
    assert [c["name"] for c in parts.tls.certificates()] == ["app.example.test"] and parts.sites()[0]["tls"]


def test_443_taken_by_a_service_forward_is_refused():
    vpn = {"name": "vpn", "kind": "plain", "command": "x", "forwards": [{"port": 443}]}
    assert error([SITE, vpn]).field == "services[vpn].forwards[0].port"
