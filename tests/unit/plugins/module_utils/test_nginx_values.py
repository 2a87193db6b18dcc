"""_nginx_values: the single values of a site as nginx takes them; site and file names of domains."""
import pytest

from ansible_collections.homelab.onebox.plugins.module_utils._errors import ValidationError
from ansible_collections.homelab.onebox.plugins.module_utils import _nginx_render as nr
from ansible_collections.homelab.onebox.plugins.module_utils import _nginx_values as nv


@pytest.mark.parametrize("value,expected", [
    (80, "80"), ("8080", "8080"), ("127.0.0.1:8080", "127.0.0.1:8080"), ("[::]:80", "[::]:80"), ("*:80", "*:80")])
def test_listen_forms(value, expected):
    assert nv.listen(value, "listen[0]") == expected


@pytest.mark.parametrize("value", ["_", "a.example.org", "*.example.org", ".example.org", "www.example.*", "localhost"])
def test_server_name_forms(value):
    assert nv.server_name(value, "server_names[0]") == value


# ---- wildcard domains -> site and file names ---------------------------------------------------
@pytest.mark.parametrize("domain,name", [
    ("example.org", "example.org"), ("*.example.org", "_wildcard.example.org"),
    ("*.www.example.org", "_wildcard.www.example.org"), ("wildcard.example.org", "wildcard.example.org"),
])
def test_site_name_for_a_domain_is_readable_and_a_plain_file_name(domain, name):
    assert nv.site_name_for(domain) == name
    assert nv.site_name(name) == name  # a valid site name, so a plain file name
    assert nr.file_name(name) == name + ".conf"


def test_a_wildcard_and_an_exact_name_never_share_a_file():
    # No DNS name holds '_', so no exact name maps to a '_wildcard.' name.
    names = ["example.org", "*.example.org", "wildcard.example.org", "*.wildcard.example.org",
             "*.org", "org"]
    mapped = [nv.site_name_for(d) for d in names]
    assert len(set(mapped)) == len(mapped)


def test_long_domains_are_shortened_uniquely():
    label = "a" * 63
    exact = ".".join([label, label, "example", "org"])
    longer = "b." + exact
    mapped = {d: nv.site_name_for(d) for d in (exact, "*." + exact, longer, "*." + longer)}
    assert len(set(mapped.values())) == 4
    for domain, name in mapped.items():
        assert len(name) == nv.SITE_NAME_MAX and nv.site_name(name) == name
        assert name[:-13] == nv.site_name_for(domain)[:-13] and name[-13] == "_"
    assert mapped["*." + exact].startswith("_wildcard.")
    short = "%s.example.org" % label
    assert nv.site_name_for(short) == short  # 75 characters: kept as it is


@pytest.mark.parametrize("value", [".hidden", "-option", "*.example.org", "a" * 101])
def test_site_names_that_are_no_plain_file_name_are_refused(value):
    with pytest.raises(ValidationError) as err:
        nv.site_name(value, "sites[0].name")
    assert err.value.field == "sites[0].name"
