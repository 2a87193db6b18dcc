"""_dhcp: dnsmasq's lease file and the DHCPRELEASE packet (pure logic)."""
import socket
import struct

from ansible_collections.homelab.onebox.plugins.module_utils import _dhcp

LEASES = """1796113707 00:16:3e:9f:d4:75 10.87.0.43 * ff:3e:9f:d4:75:00:01:00:01:32:a1:33:9b:00:16:3e:9f:d4:75
1796113697 00:16:3E:F6:69:35 10.87.0.34 web-2 *
duid 00:01:00:01:2c:00:00:00:00:16:3e:00:00:01
1796113697 1234 fd42::10 * 00:01
garbage line
1796113697 not-a-mac 10.87.0.99 * *
"""


def test_lease_file_ipv4_leases_only_with_hostname_and_client_id_when_there():
    leases = _dhcp.parse_leases(LEASES)
    assert leases == [
        _dhcp.Lease(1796113707, "00:16:3e:9f:d4:75", "10.87.0.43", None,
                    "ff:3e:9f:d4:75:00:01:00:01:32:a1:33:9b:00:16:3e:9f:d4:75"),
        _dhcp.Lease(1796113697, "00:16:3e:f6:69:35", "10.87.0.34", "web-2", None),
    ]
    assert _dhcp.parse_leases("") == [] and _dhcp.parse_leases(None) == []


def test_missing_lease_file_is_no_leases(tmp_path):
    assert _dhcp.read_leases(str(tmp_path / "nope" / "dnsmasq.leases")) == []
    assert _dhcp.lease_file("/var/lib/lxd", "lxdbr0") == "/var/lib/lxd/networks/lxdbr0/dnsmasq.leases"


def options(packet):
    """Options of a DHCP packet after the magic cookie, as {code: bytes}."""
    assert packet[236:240] == _dhcp.MAGIC_COOKIE
    found, index = {}, 240
    while packet[index] != _dhcp.OPTION_END:
        code, length = packet[index], packet[index + 1]
        found[code] = packet[index + 2:index + 2 + length]
        index += 2 + length
    return found


def test_release_packet_names_the_lease_the_server_and_the_client_id():
    lease = _dhcp.parse_leases(LEASES)[0]
    packet = _dhcp.release_packet(lease, "10.87.0.1", xid=0x01020304)
    op, htype, hlen, _hops, xid = struct.unpack("!BBBBI", packet[:8])
    assert (op, htype, hlen, xid) == (1, 1, 6, 0x01020304)
    assert socket.inet_ntoa(packet[12:16]) == "10.87.0.43"  # ciaddr: the address given back
    assert packet[28:34] == bytes.fromhex("00163e9fd475")  # chaddr
    found = options(packet)
    assert found[_dhcp.OPTION_MESSAGE_TYPE] == bytes([_dhcp.DHCPRELEASE])
    assert socket.inet_ntoa(found[_dhcp.OPTION_SERVER_ID]) == "10.87.0.1"
    assert found[_dhcp.OPTION_CLIENT_ID] == bytes.fromhex(lease.client_id.replace(":", ""))
    assert len(packet) >= _dhcp.BOOTP_MIN_SIZE


def test_release_packet_without_client_id_goes_by_the_mac():
    lease = _dhcp.parse_leases(LEASES)[1]
    found = options(_dhcp.release_packet(lease, "10.87.0.1"))
    assert _dhcp.OPTION_CLIENT_ID not in found and found[_dhcp.OPTION_MESSAGE_TYPE] == b"\x07"
