"""Image and video URLs on the HTTP front door: http(s) refused by default and limited to --allowed-media-domains when on (a
local HTTP server on loopback stands in for a remote host), with the size cap, the timeout and no redirects;
file:// only under --allowed-local-media-path."""

from __future__ import annotations

import http.server
import os
import threading
import time

import httpx
import pytest

from tests.server.http_fakes import http_cfg, http_runtime
from tests.server_harness import running_server

IMAGE = os.urandom(2000)  # the fake processor takes any bytes: what matters is that these arrive
CAP = 8192
FIELD = "messages[0].content[0].image_url"


class _Media(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - the stdlib's name
        if self.path == "/slow.png":
            time.sleep(1.5)
        if self.path == "/moved.png":
            self.send_response(302)
            self.send_header("Location", "/cat.png")
            self.end_headers()
            return
        body = {"/cat.png": IMAGE, "/big.png": b"\0" * (CAP + 1), "/slow.png": IMAGE, "/clip.mp4": IMAGE[::-1]}.get(
            self.path)
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Type", "video/mp4" if self.path.endswith(".mp4") else "image/png")
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def media_host():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Media)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def local_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    (root / "cat.png").write_bytes(IMAGE)
    (root / "clip.mp4").write_bytes(IMAGE[::-1])
    (root / "big.png").write_bytes(b"\0" * (CAP + 1))
    outside = tmp_path_factory.mktemp("outside") / "secret.png"
    outside.write_bytes(b"secret")
    (root / "link.png").symlink_to(outside)
    return root, outside


def _server(tmp_path_factory, **http):
    rt = http_runtime()
    return rt, running_server(http_cfg(tmp_path_factory.mktemp("srv"), http=http), load_runtime=lambda c: rt,
                              warmup=False)


@pytest.fixture(scope="module")
def default_srv(tmp_path_factory):
    rt, ctx = _server(tmp_path_factory)
    with ctx as srv:
        yield srv, rt


@pytest.fixture(scope="module")
def open_srv(tmp_path_factory, local_dir):
    rt, ctx = _server(tmp_path_factory, allowed_media_domains=("127.0.0.1",), allowed_local_media_path=local_dir[0],
                      max_media_bytes=CAP, media_fetch_timeout_s=0.5)
    with ctx as srv:
        yield srv, rt


def _chat(srv, url: str, kind: str = "image_url", **spec) -> httpx.Response:
    body = {"messages": [{"role": "user", "content": [{"type": kind, kind: {"url": url, **spec}},
                                                      {"type": "text", "text": "what is it?"}]}], "max_tokens": 2}
    with httpx.Client(base_url=srv.server.http.url, timeout=30) as c:
        return c.post("/v1/chat/completions", json=body)


def _refused(resp: httpx.Response, status: int, words: str) -> None:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert err["param"] == FIELD and words in err["message"], err


def test_url_images_are_refused_by_default(default_srv, media_host, local_dir):
    srv, rt = default_srv
    _refused(_chat(srv, f"http://127.0.0.1:{media_host}/cat.png"), 400, "--allowed-media-domains")
    _refused(_chat(srv, f"file://{local_dir[0] / 'cat.png'}"), 400, "--allowed-local-media-path")
    assert rt.processor.images == []


def test_allowed_host_is_fetched(open_srv, media_host):
    srv, rt = open_srv
    assert _chat(srv, f"http://127.0.0.1:{media_host}/cat.png").status_code == 200
    assert rt.processor.images[-1].data == IMAGE and rt.processor.images[-1].mime_type == "image/png"


def test_other_hosts_are_refused_even_on_the_same_machine(open_srv, media_host):
    _refused(_chat(open_srv[0], f"http://localhost:{media_host}/cat.png"), 400, "not in --allowed-media-domains")


@pytest.mark.parametrize("path,status,words", [("/big.png", 413, "cap"), ("/slow.png", 400, "took over"),
                                               ("/moved.png", 400, "HTTP 302"), ("/none.png", 400, "HTTP 404")])
def test_fetch_limits(open_srv, media_host, path, status, words):
    srv, rt = open_srv
    _refused(_chat(srv, f"http://127.0.0.1:{media_host}{path}"), status, words)
    assert _chat(srv, f"http://127.0.0.1:{media_host}/cat.png").status_code == 200  # the next one is served


def test_local_files_only_under_the_folder(open_srv, local_dir):
    srv, rt = open_srv
    root, outside = local_dir
    assert _chat(srv, f"file://{root / 'cat.png'}").status_code == 200
    assert rt.processor.images[-1].data == IMAGE
    for url in (f"file://{outside}", f"file://{root}/../{outside.parent.name}/{outside.name}", f"file://{root}",
                f"file://{root / 'link.png'}", f"file://{root / 'missing.png'}"):
        _refused(_chat(srv, url), 400, "not a file under --allowed-local-media-path")
    _refused(_chat(srv, f"file://{root / 'big.png'}"), 413, "cap")
    assert all(im.data != b"secret" for im in rt.processor.images)


def test_video_urls_follow_the_same_rules(default_srv, open_srv, media_host, local_dir):
    srv, rt = open_srv
    url = f"http://127.0.0.1:{media_host}/clip.mp4"
    assert _chat(srv, url, "video_url", fps=1.0, max_frames=4).status_code == 200
    got = rt.processor.videos[-1]
    assert (got.data, got.mime_type, got.fps, got.max_frames) == (IMAGE[::-1], "video/mp4", 1.0, 4)
    assert _chat(srv, f"file://{local_dir[0] / 'clip.mp4'}", "video_url").status_code == 200
    assert rt.processor.videos[-1].data == IMAGE[::-1] and rt.processor.videos[-1].fps is None
    resp = _chat(default_srv[0], url, "video_url")
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "messages[0].content[0].video_url"
    assert "http(s) video URLs are off" in resp.json()["error"]["message"]
    resp = _chat(srv, f"http://127.0.0.1:{media_host}/big.png", "video_url")
    assert resp.status_code == 413 and resp.json()["error"]["param"] == "messages[0].content[0].video_url"
