"""The fold request's wire format: signed JSON, round-tripped without a store."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from celerynb.errors import SignatureError
from celerynb.plane import codec
from celerynb.plane.keys import REDUCED
from celerynb.plane.records import FoldRequest

SECRET = "s" * 32
parts = st.lists(st.integers(min_value=0, max_value=2**31))
outs = st.integers(min_value=REDUCED, max_value=2**31)


@given(parts, outs)
def test_a_fold_request_round_trips(parts: list[int], out: int) -> None:
    request = FoldRequest(parts, out)
    back = FoldRequest.decode(SECRET, request.encode(SECRET))
    assert back == request and list(back.parts) == parts and back.out == out


@given(parts, outs)
def test_parts_given_as_a_list_or_a_tuple_are_the_same_request(parts: list[int], out: int) -> None:
    assert FoldRequest(parts, out) == FoldRequest(tuple(parts), out)
    assert hash(FoldRequest(parts, out)) == hash(FoldRequest(tuple(parts), out))


@given(parts, outs)
def test_a_fold_request_signed_with_another_secret_is_refused(parts: list[int], out: int) -> None:
    with pytest.raises(SignatureError):
        FoldRequest.decode(SECRET, FoldRequest(parts, out).encode("t" * 32))


def test_an_unsigned_fold_request_is_refused() -> None:
    with pytest.raises(SignatureError):
        FoldRequest.decode(SECRET, b"[[0, 1], -1]")


@pytest.mark.parametrize(
    "body", [b"{}", b"[[0, 1]]", b'[["0"], 1]', b"[[0], 1.5]", b"[[true], 1]", b"[[0], false]"]
)
def test_a_signed_body_that_is_no_fold_request_is_refused(body: bytes) -> None:
    with pytest.raises(ValueError, match="not a fold request"):
        FoldRequest.decode(SECRET, codec.sign(SECRET, body))


def test_the_wire_format_is_signed_json_parts_then_out() -> None:
    blob = FoldRequest([2, 3], 7).encode(SECRET)
    assert bytes(codec.verify(SECRET, blob)) == b"[[2, 3], 7]"
