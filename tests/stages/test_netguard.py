"""The SSRF guard refuses non-public addresses unless the recipe allows them."""

import socket

import pytest

import stages.netguard as netguard
from stages.netguard import UrlGuard


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/x.jpg",
        "http://localhost:8080/x.jpg",
        "http://10.1.2.3/x.jpg",
        "http://192.168.0.10/a",
        "http://172.16.5.5/a",
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata endpoint
        "http://[::1]/x.jpg",
        "http://[fe80::1]/x.jpg",
        "http://0.0.0.0/x",
        "file:///etc/passwd",
        "ftp://93.184.216.34/x",
        "http:///nohost",
    ],
)
def test_refuses_non_public(url):
    assert UrlGuard().refuse(url) is not None


def test_public_address_passes_and_allow_list_opens_loopback():
    assert UrlGuard().refuse("http://93.184.216.34/x.jpg") is None
    guard = UrlGuard(allow=["127.0.0.1/32"])
    assert guard.refuse("http://127.0.0.1:1234/x.jpg") is None
    assert guard.refuse("http://10.0.0.1/x.jpg") is not None  # only what was allowed


def test_unresolvable_host_is_left_to_the_downloader():
    assert UrlGuard().refuse("http://no-such-host.invalid/x.jpg") is None


def test_checked_address_is_the_one_to_connect_to(monkeypatch):
    guard = UrlGuard(allow=["127.0.0.1/32"])
    assert str(guard.checked_address("127.0.0.1", 80)[0]) == "127.0.0.1"
    address, why = guard.checked_address("127.0.0.2", 80)
    assert address is None and "non-public address 127.0.0.2" in why

    def no_such_name(host, port, proto=0):  # NXDOMAIN without asking a resolver
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    netguard._resolve.cache_clear()
    monkeypatch.setattr(netguard.socket, "getaddrinfo", no_such_name)
    assert guard.checked_address("no-such-host.invalid", 80) == (None, None)


def test_temporary_dns_failure_is_not_cached(monkeypatch):
    calls = []

    def flaky(host, port, proto=0):
        calls.append(host)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    netguard._resolve.cache_clear()
    monkeypatch.setattr(netguard.socket, "getaddrinfo", flaky)
    with pytest.raises(socket.gaierror):
        UrlGuard().checked_address("flaky.test", 80)
    assert UrlGuard().refuse("http://flaky.test/x.jpg") is None  # left to the proxy, which says transient
    assert calls == ["flaky.test", "flaky.test"]
