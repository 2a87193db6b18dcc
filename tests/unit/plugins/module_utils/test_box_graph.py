"""_box_graph on the status of test_box_info's box: the nodes and edges of the picture, and the
DOT text Graphviz draws (checked with Debian's dot itself when it is there: the set-up installs it)."""
from __future__ import annotations

import shutil
import subprocess

from ansible_collections.homelab.onebox.plugins.module_utils import _box_graph as bg

from unit.plugins.module_utils.test_box_info import site_files, status


def edges(picture):
    return {(edge["from"], edge["to"]): edge["label"] for edge in picture["edges"]}


def test_domains_go_to_the_proxy_the_proxy_to_containers_ports_to_their_containers():
    picture = bg.graph(status())
    kinds = {node["id"]: node["kind"] for node in picture["nodes"]}
    assert sorted(n for n, k in kinds.items() if k == "domain") == ["domain:site.test", "domain:web.test"]
    assert [n for n, k in kinds.items() if k == "proxy"] == ["proxy:unit-proxy"]
    assert sorted(n for n, k in kinds.items() if k == "container") == [
        "container:site", "container:vpn", "container:web-1", "container:web-2"]
    assert sorted(n for n, k in kinds.items() if k == "port") == [
        "port:tcp/443", "port:tcp/7000-7002", "port:tcp/80", "port:tcp/8000", "port:udp/51820"]
    found = edges(picture)
    assert found[("domain:site.test", "proxy:unit-proxy")] == "https"
    assert found[("domain:web.test", "proxy:unit-proxy")] == "http"
    assert found[("proxy:unit-proxy", "container:site")] == "site.test/"
    assert found[("proxy:unit-proxy", "container:web-1")] == "site.test/web/\nweb.test/\ntcp/8000"
    assert found[("port:tcp/7000-7002", "container:vpn")] == ":8000-8002"
    assert found[("port:udp/51820", "container:vpn")] == ""
    assert found[("port:tcp/80", "proxy:unit-proxy")] == "" and found[("port:tcp/8000", "proxy:unit-proxy")] == ""
    assert len(found) == 10  # 2 domains, 3 containers behind the proxy, 5 host ports
    labels = {node["id"]: node["label"] for node in picture["nodes"]}
    assert labels["domain:site.test"] == "site.test\ncertificate until 2027-03-16"
    assert labels["container:web-2"] == "web-2\n10.0.0.12\nRunning"
    groups = {node["id"]: node["group"] for node in picture["nodes"]}
    assert groups["container:web-1"] == groups["container:web-2"] == "web (pool)"


def test_a_drained_member_and_a_target_outside_the_box():
    info = status(files=site_files(down=("web-2",)))
    info["forwards"].append({"proto": "tcp", "port": "2223", "address": "192.0.2.50", "target_port": "2223",
                             "host_address": None, "sources": [], "comment": None, "container": None})
    picture = bg.graph(info)
    assert ("port:tcp/2223", "address:192.0.2.50") in edges(picture)
    text = bg.dot(picture)
    assert '"address:192.0.2.50" [label="192.0.2.50", shape=box' in text


def test_the_dot_text_ports_on_the_right_their_arrows_back_at_their_containers():
    text = bg.dot(bg.graph(status()), title='box "unit"')
    assert text.startswith("digraph onebox {\n") and text.endswith("}\n")
    assert 'label="box \\"unit\\""' in text
    assert '"domain:site.test" -> "proxy:unit-proxy" [label="https"];' in text
    assert '"proxy:unit-proxy" -> "container:web-1" [label="site.test/web/\\nweb.test/\\ntcp/8000"];' in text
    assert '"container:vpn" -> "port:tcp/7000-7002" [dir=back, label=":8000-8002"];' in text
    assert '"proxy:unit-proxy" -> "port:tcp/80" [dir=back];' in text
    assert 'subgraph "cluster_domains"' in text and 'subgraph "cluster_ports"' in text
    assert text.index("cluster_domains") < text.index('"proxy:unit-proxy" [') < text.index("cluster_containers") \
        < text.index("cluster_ports")


def test_a_stopped_container_is_drawn_dashed_and_grey():
    info = status()
    info["services"][0]["containers"][0]["status"] = "Stopped"
    text = bg.dot(bg.graph(info))
    assert '"container:site" [label="site\\n10.0.0.10\\nStopped", shape=box, fillcolor="#eeeeee", style="filled,dashed"];' in text


def test_quote():
    assert bg.quote('a "b" \\ c\nd') == '"a \\"b\\" \\\\ c\\nd"'


def test_graphviz_draws_it():
    dot = shutil.which("dot")
    assert dot, "Graphviz's dot is missing: the set-up installs Debian's graphviz"
    svg = subprocess.run([dot, "-Tsvg"], input=bg.dot(bg.graph(status())), capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert "<svg" in svg and ">site.test</text>" in svg and ">host udp/51820</text>" in svg
