"""http_convert's decoders: the fast optional ones (orjson, pybase64) and the stdlib fallbacks agree, strictly."""

from __future__ import annotations

import base64
import binascii
import os
import sys

import pytest

from vlm_service import errors
from vlm_service.server import http_convert as hc


@pytest.fixture(params=["fast", "stdlib"])
def decoders(request, monkeypatch):
    if request.param == "stdlib":  # as if the optional packages were not installed
        monkeypatch.setitem(sys.modules, "orjson", None)
        monkeypatch.setitem(sys.modules, "pybase64", None)
    return hc._json_loads(), hc._b64decode()


def test_decoders_agree(decoders):
    loads, b64 = decoders
    data = os.urandom(3000)
    assert b64(base64.b64encode(data).decode()) == data
    for bad in ("@@@@", "abc", "ab=c"):
        with pytest.raises((binascii.Error, ValueError)):
            b64(bad)
    assert loads('{"a": [1, "é"]}'.encode()) == {"a": [1, "é"]}
    with pytest.raises(ValueError):
        loads(b"{nope")


def test_data_url_mime_and_payload():
    img = hc.image_from_data_url("data:Image/PNG;base64," + base64.b64encode(b"xyz").decode(), "f")
    assert (img.data, img.mime_type) == (b"xyz", "image/png")
    with pytest.raises(errors.InvalidInput) as err:
        hc.image_from_data_url("data:image/png,plain", "messages[0].content[0].image_url")
    assert err.value.field == "messages[0].content[0].image_url"
