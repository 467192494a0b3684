"""5 over HTTP: the decompression bomb (a ~100 KB PNG declaring 30k x 30k) sent as a data URL is a 400 naming the
image's field, refused from its header (peak RSS stays bounded); the next request succeeds."""

from __future__ import annotations

from http_helpers import chat_body, client, error_of
from reliability_helpers import png, wait_idle
from test_05_decompression_bomb import _peak_rss_mb, bomb_png


def test_http_bomb_refused_from_header_with_bounded_rss(server):
    before = _peak_rss_mb()
    with client(server) as http:
        for _ in range(3):
            resp = http.post("/v1/chat/completions", json=chat_body("what is it", [bomb_png()], max_tokens=2))
            assert resp.status_code == 400, resp.text
            err = error_of(resp)
            assert err["param"] == "messages[0].content[0].image_url" and err["param"] in err["message"]
        assert _peak_rss_mb() - before < 200, "decoding even a part of 900 M pixels would show in the peak RSS"
        ok = http.post("/v1/chat/completions", json=chat_body("and this", [png(seed=51)], max_tokens=2))
        assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] >= 1
    assert wait_idle(server.server.runtime) is not None
