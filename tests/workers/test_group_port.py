"""The trainers' rendezvous port: free, and outside the range the kernel gives outgoing sockets."""
import socket

from rlengine.workers.group import _ephemeral_low, free_port


def test_free_port_is_bindable_and_below_the_ephemeral_range():
    low = _ephemeral_low()
    for _ in range(20):
        port = free_port()
        if low > 20001:
            assert 20000 <= port < low
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
