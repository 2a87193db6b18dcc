"""The example VPN stand-in: echoes UDP datagrams, prefixed with its host name."""
import socket

sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("0.0.0.0", 51820))
prefix = socket.gethostname().encode() + b" "
while True:
    data, peer = sock.recvfrom(2048)
    sock.sendto(prefix + data, peer)
