"""Data-URL payloads lifted out of the raw body (http_payloads.py): chat_from_raw must give exactly what the plain
parse (chat_from_body(parse_body(raw))) gives, for every body, and decode long payloads without the JSON parser."""

from __future__ import annotations

import base64
import json
import os
import sys

import pytest

from vlm_service import errors, types
from vlm_service.server import http_convert as hc
from vlm_service.server.http_payloads import MIN_LIFT, lift_payloads


def _url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _body(*parts, **extra) -> bytes:
    return json.dumps({"messages": [{"role": "user", "content": list(parts)}], **extra}).encode()


def _image(data: bytes, mime: str = "image/png") -> dict:
    return {"type": "image_url", "image_url": {"url": _url(data, mime)}}


def _plain(raw: bytes) -> hc.ChatCall:
    return hc.chat_from_body(hc.parse_body(raw))


def _same(raw: bytes) -> hc.ChatCall:
    fast = hc.chat_from_raw(bytearray(raw))  # the app hands over its receive buffer
    assert fast.messages == _plain(raw).messages and fast.sampling == _plain(raw).sampling
    return fast


BIG = os.urandom(3 * MIN_LIFT)


def test_long_payloads_are_lifted_and_decoded_from_the_body():
    raw = _body(_image(BIG), {"type": "text", "text": "two"}, _image(BIG[::-1], "image/jpeg"))
    slim, lifted = lift_payloads(raw)
    assert len(lifted.payloads) == 2 and len(slim) < 400
    assert [bytes(v) for v in lifted.payloads.values()] == [base64.b64encode(BIG), base64.b64encode(BIG[::-1])]
    call = _same(raw)
    images = [p for p in call.messages[0][1] if isinstance(p, types.ImageInput)]
    assert [(i.data, i.mime_type) for i in images] == [(BIG, "image/png"), (BIG[::-1], "image/jpeg")]


def test_a_video_data_url_is_lifted_and_keeps_its_sampling():
    part = {"type": "video_url", "video_url": {"url": _url(BIG, "video/mp4"), "fps": 1.5, "max_frames": 8}}
    video = _same(_body(part, {"type": "text", "text": "what happens"})).messages[0][1][0]
    assert video == types.VideoInput(data=BIG, mime_type="video/mp4", fps=1.5, max_frames=8)


def test_short_and_escaped_payloads_stay_with_the_parser():
    small = os.urandom(100)
    escaped = _body(_image(BIG)).replace(b"/", b"\\/")  # legal JSON: some encoders escape every slash
    assert not lift_payloads(_body(_image(small)))[1].payloads
    assert not lift_payloads(escaped)[1].payloads
    assert _same(escaped).messages[0][1][0].data == BIG


@pytest.mark.parametrize("where", ["text", "stop", "key"])
def test_a_data_url_outside_an_image_part_is_left_as_sent(where):
    url = _url(BIG)
    if where == "text":  # a user quoting a data URL as text: the model must see the text itself
        raw = _body({"type": "text", "text": url})
    elif where == "stop":
        raw = _body({"type": "text", "text": "x"}, stop=[url])
    else:  # an unsupported field named like a data URL
        raw = json.dumps({"messages": [{"role": "user", "content": "x"}], url: 1}).encode()
    if where == "key":
        with pytest.raises(errors.InvalidInput) as err:
            hc.chat_from_raw(raw)
        assert err.value.field == url  # the plain parse's error, naming what was sent
        return
    call = _same(raw)
    assert url in (call.messages[0][1][0], *call.sampling.stop)


def test_a_quoted_data_url_inside_a_text_string_is_not_cut():
    # '"data:' inside a string is escaped (\"data:...): its payload runs into a backslash, so it is not lifted
    text = 'he wrote "' + _url(BIG) + '" here'
    raw = _body({"type": "text", "text": text})
    assert not lift_payloads(raw)[1].payloads
    assert _same(raw).messages[0][1][0] == text


def test_bad_base64_and_bad_json_give_the_plain_errors():
    bad = _body({"type": "image_url", "image_url": {"url": "data:image/png;base64," + "@" * MIN_LIFT}})
    with pytest.raises(errors.InvalidInput) as err:
        hc.chat_from_raw(bad)
    assert err.value.field == "messages[0].content[0].image_url" and "base64" in str(err.value)
    with pytest.raises(errors.InvalidInput, match="not valid JSON"):
        hc.chat_from_raw(_body(_image(BIG))[:-3])


def test_keys_are_per_request_and_unguessable():
    a, b = lift_payloads(_body(_image(BIG)))[1], lift_payloads(_body(_image(BIG)))[1]
    assert a.nonce != b.nonce and len(a.nonce) >= 16
    assert a.take(next(iter(b.payloads))) is None  # another request's key is plain text here


def test_without_pybase64_the_lifted_payload_decodes_the_same(monkeypatch):
    monkeypatch.setitem(sys.modules, "pybase64", None)
    monkeypatch.setattr(hc, "_B64DECODE", hc._b64decode())
    assert _same(_body(_image(BIG))).messages[0][1][0].data == BIG


def test_a_marker_in_a_later_string_is_not_taken_for_this_one():
    # "data:x" ends before the ;base64, that a later string holds: nothing is lifted across the two strings
    raw = _body({"type": "text", "text": "data:x"}, {"type": "text", "text": "y;base64," + "A" * MIN_LIFT})
    assert not lift_payloads(raw)[1].payloads
    assert _same(raw).messages[0][1] == ["data:x", "y;base64," + "A" * MIN_LIFT]
