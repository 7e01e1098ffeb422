"""The egress proxy checks every hop: redirects, CONNECT, other schemes, and it connects to the address it checked.

Everything stays on loopback: servers on 127.0.0.1 and 127.0.0.2 (only 127.0.0.1/32 is allowed).
"""

import os
import urllib.error
import urllib.request

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import pytest

import stages.netguard as netguard
from pipeline.schema import make_rows
from stages.base import StageContext
from stages.download import DownloadImages
from stages.download_errors import GUARD_MARK
from stages.egress_proxy import EgressProxy, proxy_environment
from stages.netguard import UrlGuard
from tests.stages.loopback import LoopbackServer, QuietHandler
from tests.stages.loopback import jpeg as _jpeg


def jpeg(w, h) -> bytes:
    return _jpeg(w, h, (90, 20, 160))


ALLOW = ["127.0.0.1/32"]


class Server(LoopbackServer):
    """/a.jpg is an image; /to/<url> redirects (302) to <url>; records the Host header of each hit."""

    def __init__(self, host: str, body: bytes = b"image"):
        self.hits: list[tuple[str, str]] = []
        outer = self

        class Handler(QuietHandler):
            def do_GET(self):
                outer.hits.append((self.path, self.headers.get("Host")))
                if self.path.startswith("/to/"):
                    return self.redirect(self.path[len("/to/"):])
                self.send_body(body)

        super().__init__(Handler, host)


@pytest.fixture
def servers():
    with Server("127.0.0.1", jpeg(32, 16)) as allowed, Server("127.0.0.2", jpeg(32, 16)) as other:
        yield allowed, other


def opener(proxy: str):
    return urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy, "https": proxy, "ftp": proxy}))


def test_direct_fetch_through_the_proxy(servers):
    allowed, _ = servers
    with EgressProxy(UrlGuard(ALLOW)) as proxy:
        assert opener(proxy).open(f"{allowed.base}/a.jpg", timeout=5).read() == jpeg(32, 16)
    assert allowed.hits == [("/a.jpg", f"127.0.0.1:{allowed.port}")]


def test_redirect_to_a_non_allowed_address_is_refused(servers):
    allowed, other = servers
    with EgressProxy(UrlGuard(ALLOW)) as proxy:
        with pytest.raises(urllib.error.HTTPError) as err:
            opener(proxy).open(f"{allowed.base}/to/{other.base}/a.jpg", timeout=5)
    assert err.value.code == 403 and GUARD_MARK in str(err.value) and "127.0.0.2" in str(err.value)
    assert other.hits == []  # the redirect target was never contacted


def test_connect_tunnel_is_checked_too(servers):
    _, other = servers
    with EgressProxy(UrlGuard(ALLOW)) as proxy:
        with pytest.raises(urllib.error.URLError, match=f"Tunnel connection failed: 403 {GUARD_MARK}"):
            opener(proxy).open(f"https://127.0.0.2:{other.port}/a.jpg", timeout=5)
    assert other.hits == []


def test_redirect_to_another_scheme_is_refused(servers):
    allowed, _ = servers
    with EgressProxy(UrlGuard(ALLOW)) as proxy, pytest.raises(urllib.error.HTTPError, match="scheme 'ftp'"):
        opener(proxy).open(f"{allowed.base}/to/ftp://127.0.0.1/x.jpg", timeout=5)


def test_connects_to_the_address_it_checked(servers, monkeypatch):
    """A name that rebinds after the check (first answer 127.0.0.1, then 127.0.0.2): one lookup, the checked address."""
    allowed, other = servers
    answers = []

    def rebinding(host, port):
        answers.append(host)
        return (netguard.ipaddress.ip_address("127.0.0.1" if len(answers) == 1 else "127.0.0.2"),)

    monkeypatch.setattr(netguard, "_resolve", rebinding)
    with EgressProxy(UrlGuard(ALLOW)) as proxy:
        body = opener(proxy).open(f"http://rebind.test:{allowed.port}/a.jpg", timeout=5).read()
    assert body == jpeg(32, 16) and answers == ["rebind.test"]
    assert allowed.hits == [("/a.jpg", f"rebind.test:{allowed.port}")] and other.hits == []


REAL_GETADDRINFO = netguard.socket.getaddrinfo


def no_such_name(host, *args, **kw):  # NXDOMAIN for *.invalid without asking a resolver: tests stay on the machine
    if str(host).endswith(".invalid"):
        raise netguard.socket.gaierror(netguard.socket.EAI_NONAME, "Name or service not known")
    return REAL_GETADDRINFO(host, *args, **kw)


def test_unknown_host_and_closed_port_have_clear_answers(monkeypatch):
    netguard._resolve.cache_clear()
    monkeypatch.setattr(netguard.socket, "getaddrinfo", no_such_name)
    with EgressProxy(UrlGuard(ALLOW)) as proxy:
        with pytest.raises(urllib.error.HTTPError, match="unknown host no-such-host.invalid"):
            opener(proxy).open("http://no-such-host.invalid/x.jpg", timeout=5)
        with pytest.raises(urllib.error.HTTPError, match="cannot connect to 127.0.0.1"):
            opener(proxy).open("http://127.0.0.1:9/x.jpg", timeout=5)


def test_proxy_environment_is_restored(monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.delenv("http_proxy", raising=False)
    with proxy_environment("http://127.0.0.1:1"):
        assert os.environ["http_proxy"] == "http://127.0.0.1:1" and "no_proxy" not in os.environ
        assert urllib.request.getproxies()["https"] == "http://127.0.0.1:1"
    assert os.environ["no_proxy"] == "127.0.0.1" and "http_proxy" not in os.environ


def test_download_stage_blocks_a_redirect_hop_and_keeps_the_direct_fetch(tmp_path, servers):
    """img2dataset itself goes through the proxy: the redirect row is blocked, the direct row kept."""
    allowed, other = servers
    ctx = StageContext(build_id="b", seed=0, recipe_dir=tmp_path, source="yfcc", task="understanding", build_dir=tmp_path / "build")
    stage = DownloadImages(DownloadImages.Config(stage="download_images", resolution=16, timeout=3, allow_networks=ALLOW), ctx)
    stage.preflight()
    table = make_rows([{"source": "yfcc", "source_key": k, "task": "understanding", "meta": {"url": u}}
                       for k, u in {"direct": f"{allowed.base}/a.jpg", "hop": f"{allowed.base}/to/{other.base}/a.jpg"}.items()])
    out = {r["source_key"]: r for r in stage.run(table).to_pylist()}
    assert out["direct"]["status"] == "kept" and (out["direct"]["width"], out["direct"]["height"]) == (16, 8)
    assert (out["hop"]["status"], out["hop"]["reason"]) == ("failed", "blocked_address")
    assert GUARD_MARK in out["hop"]["detail"] and "non-public address 127.0.0.2" in out["hop"]["detail"]
    assert other.hits == []
