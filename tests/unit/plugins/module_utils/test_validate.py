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


@pytest.mark.parametrize("name, reason", [("Data", "lower-case"), ("data_1", "1-63 letters"), ("1data", "start with a letter"),
                                          ("data-", "not end with a hyphen"), ("x" * 64, "1-63")])
def test_lower_name_is_an_instance_name_in_lower_case(name, reason):
    assert v.lower_name("db-data2") == "db-data2"
    with pytest.raises(ValidationError) as err:
        v.lower_name(name, "services[db].volumes[0].name")
    assert err.value.field == "services[db].volumes[0].name" and err.value.value == name and reason in err.value.reason


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
    with pytest.raises(ValidationError, match="not a wildcard"):
        v.domain("*.example.org", wildcard=False)


@pytest.mark.parametrize("value,words", [
    ("www.*.example.org", "only as the whole first label"), ("*foo.example.org", "only as the whole first label"),
    ("**.example.org", "only as the whole first label"), ("*.*.example.org", "only as the whole first label"),
    ("foo*.example.org", "only as the whole first label"), ("*", "'*' alone"), ("*.", "'*' alone"),
    ("www.example.*", "trailing wildcard"), (".example.org", "starts with a dot"),
])
def test_domain_wildcards_nginx_does_not_take_say_why(value, words):
    with pytest.raises(ValidationError) as err:
        v.domain(value, "services[web].domains[0]")
    assert err.value.field == "services[web].domains[0]" and err.value.value == value
    assert words in err.value.reason


@pytest.mark.parametrize("value,expected", [("*.example.org", "*.example.org"), ("*.Example.ORG.", "*.example.org"),
                                            ("*.org", "*.org"), ("*.a-b.example.org", "*.a-b.example.org")])
def test_domain_leading_wildcard(value, expected):
    assert v.domain(value) == expected


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


@pytest.mark.parametrize("value,expected", [("512MiB", 512 * 1024 ** 2), ("1GB", 10 ** 9), ("4096B", 4096),
                                            ("2 GiB", 2 * 1024 ** 3)])
def test_size_bytes(value, expected):
    assert v.size_bytes(value, "memory") == expected


@pytest.mark.parametrize("value", [256, "256", " 4096 "])
def test_size_without_a_unit_is_refused_with_the_unit_to_give(value):
    # LXD reads a bare number as bytes: `memory: 256` would be a 256-byte container.
    with pytest.raises(ValidationError) as err:
        v.memory(value, "services[web].memory")
    assert err.value.field == "services[web].memory" and err.value.value == value
    assert "give a unit: %sMiB" % str(value).strip() in err.value.reason


@pytest.mark.parametrize("value", ["lots", "512MB!", "1.5GiB", "-1", "", True, "512mib"])
def test_memory_rejects_non_numeric(value):
    with pytest.raises(ValidationError) as err:
        v.memory(value, "memory")
    assert err.value.field == "memory"


@pytest.mark.parametrize("value", ["4MiB", "16MiB", "127MiB", "134217727B", "100MB", "1KiB"])
def test_memory_below_the_measured_minimum_is_refused(value):
    with pytest.raises(ValidationError) as err:
        v.memory(value, "services[web].memory")
    assert err.value.field == "services[web].memory" and err.value.value == value
    assert "below 128MiB" in err.value.reason


@pytest.mark.parametrize("value,expected", [("128MiB", "128MiB"), ("134217728B", "134217728B"), ("1GB", "1GB"),
                                            ("2 GiB", "2GiB"), ("512MiB", "512MiB")])
def test_memory_at_or_above_the_minimum(value, expected):
    assert v.memory(value) == expected


def test_memory_percentage():
    assert v.memory("50%") == "50%"
    assert v.memory("1%") == "1%"
    for bad in ("150%", "0%", "x%", "%"):
        with pytest.raises(ValidationError, match="percentage"):
            v.memory(bad)


def test_memory_swap_takes_a_unit_and_is_at_least_the_ram():
    assert v.memory_swap("1GiB", "memory_swap", "512MiB", "memory") == "1GiB"
    assert v.memory_swap("512MiB", "memory_swap", "512MiB", "memory") == "512MiB"
    with pytest.raises(ValidationError) as err:
        v.memory_swap(1024, "services[web].memory_swap", "512MiB", "services[web].memory")
    assert err.value.field == "services[web].memory_swap" and "give a unit: 1024MiB" in err.value.reason
    with pytest.raises(ValidationError) as err:
        v.memory_swap("256MiB", "services[web].memory_swap", "512MiB", "services[web].memory")
    assert err.value.field == "services[web].memory_swap" and "at least memory (512MiB)" in err.value.reason
    with pytest.raises(ValidationError) as err:
        v.memory_swap("1GiB", "services[web].memory_swap", "50%", "services[web].memory")
    assert err.value.field == "services[web].memory" and "percentage" in err.value.reason


@pytest.mark.parametrize("value,expected", [("2", "2"), (2, "2"), ("0-1", "0-1"), ("0,2", "0,2"),
                                            ("0-1,3", "0-1,3"), ("0-0", "0-0"), ("1-1,0", "1-1,0")])
def test_cpus_forms_lxd_takes(value, expected):
    assert v.cpus(value) == expected


@pytest.mark.parametrize("value", ["0", 0, "two", "1-", "-1", "0-1-2", "1-0", "0,,2", ",0", "0, 2", "",
                                   True, 1.5, "0x1"])
def test_cpus_rejects(value):
    with pytest.raises(ValidationError) as err:
        v.cpus(value, "services[web].cpus")
    assert err.value.field == "services[web].cpus" and err.value.value == value


@pytest.mark.parametrize("value", ["1", "2", "0-1", "0,1", "1-1", "0-0,1"])
def test_cpus_within_the_host(value):
    assert v.cpus(value, "cpus", host_cpus=2) == value


@pytest.mark.parametrize("value,words", [("3", "asks for 3 CPUs; the host has 2 CPUs"),
                                         ("99", "asks for 99 CPUs; the host has 2"),
                                         ("0-2", "names CPU 2; the host has 2 CPUs (0-1)"),
                                         ("0,2", "names CPU 2; the host has 2 CPUs (0-1)"),
                                         ("0-1,3", "names CPU 3; the host has 2 CPUs (0-1)"),
                                         ("0-63", "names CPU 63; the host has 2 CPUs (0-1)")])
def test_cpus_beyond_the_host_name_field_value_and_host_count(value, words):
    with pytest.raises(ValidationError) as err:
        v.cpus(value, "services[web].cpus", host_cpus=2)
    assert err.value.field == "services[web].cpus" and err.value.value == value
    assert words in err.value.reason


def test_cpus_on_a_one_cpu_host():
    with pytest.raises(ValidationError, match=r"names CPU 1; the host has 1 CPU \(0\)"):
        v.cpus("1-1", "cpus", host_cpus=1)
    assert v.cpus("1", "cpus", host_cpus=1) == "1"
    with pytest.raises(ValidationError, match="asks for 2 CPUs; the host has 1 CPU$"):
        v.cpus("2", "cpus", host_cpus=1)


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


@pytest.mark.parametrize("value,expected", [("/srv/app", "/srv/app"), ("/srv//app/", "/srv/app"), ("/", "/"),
                                            ("/a b/c..d", "/a b/c..d")])
def test_absolute_path_normalises(value, expected):
    assert v.absolute_path(value) == expected


@pytest.mark.parametrize("value", ["srv/app", "", "/srv/../etc/passwd", "/srv/./x", "/a\nb", "/a\x00b", 5])
def test_absolute_path_rejects(value):
    with pytest.raises(ValidationError) as err:
        v.absolute_path(value, "files[0].path")
    assert err.value.field == "files[0].path" and repr(value) in err.value.msg


@pytest.mark.parametrize("value,expected", [("0644", 0o644), ("644", 0o644), ("0o600", 0o600), ("4755", 0o4755),
                                            ("04755", 0o4755), (0o644, 0o644), (0, 0)])
def test_file_mode(value, expected):
    assert v.file_mode(value) == expected


@pytest.mark.parametrize("value", ["rw-r--r--", "0999", "88", "", "0o77777", True, -1, 0o10000, None, 6.4])
def test_file_mode_rejects(value):
    with pytest.raises(ValidationError):
        v.file_mode(value, "mode")


@pytest.mark.parametrize("value", ["app", "_apt", "www-data", "a1"])
def test_posix_name(value):
    assert v.posix_name(value) == value


@pytest.mark.parametrize("value", ["", "App", "1app", "-app", "a;b", "a{b", "a/b", "a\nb", "a'b", 'a"b', "x" * 33])
def test_posix_name_rejects(value):
    with pytest.raises(ValidationError):
        v.posix_name(value)


@pytest.mark.parametrize("value,ok", [("PORT", True), ("_X1", True), ("1X", False), ("A-B", False), ("A B", False),
                                      ("", False)])
def test_env_name(value, ok):
    if ok:
        assert v.env_name(value) == value
    else:
        with pytest.raises(ValidationError):
            v.env_name(value)


# ---- the declaration ----------------------------------------------------------------------------
