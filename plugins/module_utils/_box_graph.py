# -*- coding: utf-8 -*-
# Copyright: homelab.onebox contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The picture of the box (pure logic): box_info's status -> a graph (nodes, edges) and its Graphviz source.

graph(info)  the status (_box_info.describe) -> {nodes, edges}: each domain -> the proxy (http or
             https), the proxy -> each container it routes to (labelled with the domains and paths,
             or the host port, that lead there), each host port -> the container it is forwarded to
dot(graph)   -> DOT text, left to right: domains, the proxy, the containers (a box per service),
             the host ports (drawn at the right, their arrows pointing back at their containers)

The graph is also box_info's ``graph`` result, so a test (or a user's play) checks what the picture
shows without reading DOT. ``dot -Tsvg`` (Debian's graphviz) draws it: playbooks/status.yml.
"""
from __future__ import annotations

from ansible_collections.homelab.onebox.plugins.module_utils._box_info import address_of

# Colours by container state (fill), and the clusters' order left to right.
STATE_COLOURS = {"Running": "#d9f2d9", "Stopped": "#eeeeee", "Frozen": "#dde8f7", "Missing": "#f7d9d9"}
OTHER_COLOUR = "#f7ecd9"


def _node(kind, name):
    return "%s:%s" % (kind, name)


def graph(info):
    """The status -> {"nodes": [{id, kind, label, group, state}], "edges": [{from, to, label}]} in a
    stable order. Node ids: ``domain:NAME``, ``proxy:NAME``, ``container:NAME``, ``port:PROTO/PORT``
    (``port:ADDRESS PROTO/PORT`` for a forward of one host address), ``address:ADDRESS`` (a target
    no container of the box holds)."""
    nodes, edges, seen = [], [], {}

    def node(kind, name, label, group=None, state=None):
        key = _node(kind, name)
        if key not in seen:
            seen[key] = {"id": key, "kind": kind, "label": label, "group": group, "state": state}
            nodes.append(seen[key])
        return key

    def edge(src, dst, label):
        for existing in edges:
            if existing["from"] == src and existing["to"] == dst:
                if label and label not in existing["label"].split("\n"):
                    existing["label"] = "\n".join(filter(None, [existing["label"], label]))
                return
        edges.append({"from": src, "to": dst, "label": label or ""})

    proxy = info["proxy"]
    proxy_id = None
    if proxy:
        container = proxy["container"]
        proxy_id = node("proxy", proxy["name"], "%s\nproxy (nginx)\n%s" % (proxy["name"], address_of(container) or "-"),
                        state=container["status"])
    targets = {}
    for service in info["services"]:
        group = service["name"] + (" (%s)" % service["kind"] if service["kind"] else "")
        for container in service["containers"]:
            targets[container["name"]] = node("container", container["name"], "%s\n%s\n%s" % (
                container["name"], address_of(container) or "-", container["status"]), group=group,
                state=container["status"])

    def target(name):
        if name in targets:
            return targets[name]
        if proxy and name == proxy["name"]:
            return proxy_id
        return node("address", name, name)  # an address no container of the box holds

    for service in info["services"]:
        for entry in service["domains"]:
            cert = entry["certificate"]
            until = "\ncertificate until %s" % cert["not_after"][:10] if cert and cert["not_after"] else ""
            domain = node("domain", entry["domain"], entry["domain"] + until)
            edge(domain, proxy_id, "https" if entry["https"] else "http")
            for name in entry["containers"]:
                edge(proxy_id, target(name), "%s%s" % (entry["domain"], entry["path"]))
        for entry in service["host_ports"]:
            # The host's port reaches the proxy through its forward (below), the proxy this container.
            for name in entry["containers"]:
                edge(proxy_id, target(name), "tcp/%d%s" % (entry["port"], "" if entry["path"] == "/" else entry["path"]))
    for forward in info["forwards"]:
        where = "%s %s/%s" % (forward["host_address"], forward["proto"], forward["port"]) if forward["host_address"] \
            else "%s/%s" % (forward["proto"], forward["port"])
        port = node("port", where, "host " + where)
        label = ":%s" % forward["target_port"] if forward["target_port"] != forward["port"] else ""
        edge(port, target(forward["container"] or forward["address"]), label)
    return {"nodes": nodes, "edges": edges}


def quote(text):
    """A DOT string: quoted, its backslashes and quotes escaped, a newline as a centred line break."""
    return '"%s"' % str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def dot(picture, title=""):
    """The graph as DOT text: domains on the left, then the proxy, the containers grouped by
    service, and the host ports on the right (an edge from a port is written backwards with
    ``dir=back``, so the port ranks after its container and its arrow still points at it)."""
    lines = ["digraph onebox {",
             "  graph [rankdir=LR, fontname=\"Helvetica\", fontsize=12, nodesep=0.3, ranksep=1.0, label=%s, "
             "labelloc=t];" % quote(title),
             "  node [fontname=\"Helvetica\", fontsize=10, style=filled, fillcolor=white];",
             "  edge [fontname=\"Helvetica\", fontsize=9];"]
    kinds = {}
    for item in picture["nodes"]:
        kinds.setdefault(item["kind"], []).append(item)

    def attrs(item):
        shape = {"domain": "ellipse", "proxy": "box3d", "container": "box", "port": "cds", "address": "box"}[item["kind"]]
        fill = STATE_COLOURS.get(item["state"], OTHER_COLOUR) if item["state"] else (
            "#e8eefc" if item["kind"] == "domain" else OTHER_COLOUR)
        extra = ", style=\"filled,dashed\"" if item["state"] not in (None, "Running") else ""
        return "%s [label=%s, shape=%s, fillcolor=%s%s];" % (
            quote(item["id"]), quote(item["label"]), shape, quote(fill), extra)

    def cluster(name, label, items, indent="  "):
        out = ["%ssubgraph %s {" % (indent, quote("cluster_" + name)),
               "%s  label=%s; style=rounded; color=\"#999999\";" % (indent, quote(label))]
        out += ["%s  %s" % (indent, attrs(item)) for item in items]
        out.append("%s}" % indent)
        return out

    if kinds.get("domain"):
        lines += cluster("domains", "domains", kinds["domain"])
    lines += ["  " + attrs(item) for item in kinds.get("proxy", [])]
    groups = {}
    for item in kinds.get("container", []):
        groups.setdefault(item["group"], []).append(item)
    if groups:
        lines.append("  subgraph %s {" % quote("cluster_containers"))
        lines.append("    label=\"containers\"; style=rounded; color=\"#999999\";")
        for index, (group, items) in enumerate(groups.items()):
            lines += cluster("service_%d" % index, group, items, indent="    ")
        lines.append("  }")
    lines += ["  " + attrs(item) for item in kinds.get("address", [])]
    if kinds.get("port"):
        lines += cluster("ports", "host ports", kinds["port"])
    for item in picture["edges"]:
        label = ", label=%s" % quote(item["label"]) if item["label"] else ""
        if item["from"].startswith("port:"):
            lines.append("  %s -> %s [dir=back%s];" % (quote(item["to"]), quote(item["from"]), label))
        else:
            lines.append("  %s -> %s [%s];" % (quote(item["from"]), quote(item["to"]), label[2:]))
    lines.append("}")
    return "\n".join(lines) + "\n"
