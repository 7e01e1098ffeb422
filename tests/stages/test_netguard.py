"""The SSRF guard refuses non-public addresses unless the recipe allows them."""

import pytest

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
