"""The one validator: every rejection names the field and the value."""
import pytest

from ansible_collections.homelab.onebox.plugins.module_utils import _validate as v
from ansible_collections.homelab.onebox.plugins.module_utils._errors import ValidationError


@pytest.mark.parametrize("name", ["web", "a", "web-1", "A1b2", "x" * 63])
def test_instance_name_accepts_lxd_names(name):
    assert v.instance_name(name) == name


@pytest.mark.parametrize("name", ["", "1web", "-web", "web-", "web_1", "web.1", "we b", "x" * 64,
                                  "a;b", "a{b", "a/b", "a\nb", "web\n"])
def test_instance_name_rejects_with_field_and_value(name):
    with pytest.raises(ValidationError) as err:
        v.instance_name(name, "services[0].name")
    assert err.value.field == "services[0].name"
    assert repr(name) in err.value.msg


@pytest.mark.parametrize("value,expected", [("Example.ORG", "example.org"), ("*.example.org", "*.example.org"),
                                            ("a-b.c", "a-b.c"), ("example.org.", "example.org")])
def test_domain_normalises(value, expected):
    assert v.domain(value) == expected


@pytest.mark.parametrize("value", ["", "exa mple.org", "example..org", "-a.org", "a-.org", "a;b.org",
                                   "a{b}.org", "a.org\n", "*", "x." + "a" * 64, "foo.*.org"])
def test_domain_rejects(value):
    with pytest.raises(ValidationError, match="domain"):
        v.domain(value, "domain")


def test_domain_wildcard_can_be_refused():
    with pytest.raises(ValidationError):
        v.domain("*.example.org", wildcard=False)


@pytest.mark.parametrize("value,expected", [(1, 1), ("80", 80), (65535, 65535)])
def test_port_accepts(value, expected):
    assert v.port(value) == expected


@pytest.mark.parametrize("value", [0, 65536, -1, "http", None, True, 80.5, "8 0"])
def test_port_rejects(value):
    with pytest.raises(ValidationError) as err:
        v.port(value, "forwards[1].host_port")
    assert "forwards[1].host_port" in err.value.msg


def test_port_range_forms():
    assert v.port_range(80) == (80, 80)
    assert v.port_range("27015-27020") == (27015, 27020)
    assert v.port_range("27015:27020") == (27015, 27020)


def test_port_range_backwards():
    with pytest.raises(ValidationError, match="backwards"):
        v.port_range("9000-8000", "host_port")


@pytest.mark.parametrize("value", ["a;b", "a{", "a}", "a'b", 'a"b', "a b", "a\nb", "a\tb", "$x", ""])
def test_safe_token_rejects_injection(value):
    with pytest.raises(ValidationError):
        v.safe_token(value, "comment")


def test_url_path_must_start_with_slash():
    assert v.url_path("/jenkins/") == "/jenkins/"
    with pytest.raises(ValidationError, match="start with"):
        v.url_path("jenkins/", "path")


@pytest.mark.parametrize("value", ["a/b", "..", "a..b", "/etc"])
def test_file_name_rejects_paths(value):
    with pytest.raises(ValidationError):
        v.file_name(value, "name")


@pytest.mark.parametrize("value,expected", [("512MiB", 512 * 1024 ** 2), ("1GB", 10 ** 9), ("4096", 4096),
                                            ("2 GiB", 2 * 1024 ** 3)])
def test_size_bytes(value, expected):
    assert v.size_bytes(value, "memory") == expected


@pytest.mark.parametrize("value", ["lots", "512MB!", "1.5GiB", "-1", "", True, "512mib"])
def test_memory_rejects_non_numeric(value):
    with pytest.raises(ValidationError) as err:
        v.memory(value, "memory")
    assert err.value.field == "memory"


def test_memory_percentage():
    assert v.memory("50%") == "50%"
    with pytest.raises(ValidationError):
        v.memory("150%")


@pytest.mark.parametrize("value,ok", [("2", True), ("0-1", True), ("0,2", True), ("0", False), ("two", False),
                                      ("1-", False)])
def test_cpus(value, ok):
    if ok:
        assert v.cpus(value) == value
    else:
        with pytest.raises(ValidationError):
            v.cpus(value)


def test_ipv4():
    assert v.ipv4_address("10.0.0.1") == "10.0.0.1"
    assert v.ipv4_network("10.0.0.7/24") == "10.0.0.0/24"
    with pytest.raises(ValidationError):
        v.ipv4_address("10.0.0.256", "ipv4_address")
    with pytest.raises(ValidationError):
        v.ipv4_network("nope", "network")


@pytest.mark.parametrize("params,field", [({"parallel": 0, "timeout": 5}, "parallel"),
                                          ({"parallel": 2, "timeout": -1}, "timeout")])
def test_counts_and_timeouts_below_one_name_the_option(params, field):
    with pytest.raises(ValidationError) as err:
        v.at_least_one(params, ("parallel", "timeout"))
    assert err.value.field == field and str(params[field]) in str(err.value)
    v.at_least_one({"parallel": 1, "timeout": 30}, ("parallel", "timeout"))
