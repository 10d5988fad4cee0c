"""storywatch.webhooks.signing: Standard Webhooks v1 headers."""

from __future__ import annotations

import base64

from hypothesis import given
from hypothesis import strategies as st

from storywatch.webhooks.config import decode_secret
from storywatch.webhooks.signing import headers, message_id, probe_message_id, signature
from tests.receiver import verify

# The reference example of the Standard Webhooks specification (and of every library
# implementing it): a receiver's off-the-shelf verifier accepts what reproduces it.
REF_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
REF_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
REF_TIMESTAMP = 1614265330
REF_BODY = b'{"test": 2432232314}'
REF_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_the_reference_example_reproduces_exactly() -> None:
    key = decode_secret(REF_SECRET)
    assert key is not None
    assert signature(key, REF_ID, REF_TIMESTAMP, REF_BODY) == REF_SIGNATURE


def test_headers_carry_id_timestamp_and_signature() -> None:
    key = decode_secret(REF_SECRET)
    assert key is not None
    out = headers(REF_ID, REF_TIMESTAMP, REF_BODY, key)
    assert out == {
        "content-type": "application/json",
        "webhook-id": REF_ID,
        "webhook-timestamp": str(REF_TIMESTAMP),
        "webhook-signature": REF_SIGNATURE,
    }


def test_without_a_secret_there_is_no_signature_header() -> None:
    out = headers("e-1", 5, b"{}", None)
    assert "webhook-signature" not in out
    assert out["webhook-id"] == "e-1"


def test_ids() -> None:
    assert message_id("9f3c1a0b", 42) == "9f3c1a0b-42"
    first, second = probe_message_id(), probe_message_id()
    assert first.startswith("test-") and first != second


def test_verify_accepts_one_of_several_signatures_and_rejects_tampering() -> None:
    key = decode_secret(REF_SECRET)
    assert key is not None
    header = f"v1,bm9wZQ== {REF_SIGNATURE}"
    assert verify(key, REF_ID, str(REF_TIMESTAMP), REF_BODY, header)
    assert not verify(key, REF_ID, str(REF_TIMESTAMP + 1), REF_BODY, header)
    assert not verify(key, REF_ID, str(REF_TIMESTAMP), REF_BODY + b" ", header)
    assert not verify(key, REF_ID, "soon", REF_BODY, header)


@given(st.binary(min_size=1, max_size=64), st.binary(max_size=200), st.integers(0, 2**40))
def test_a_signature_verifies_with_its_key_only(key: bytes, body: bytes, stamp: int) -> None:
    header = signature(key, "e-7", stamp, body)
    assert header.startswith("v1,")
    assert len(base64.b64decode(header[3:])) == 32
    assert verify(key, "e-7", str(stamp), body, header)
    assert not verify(key + b"x", "e-7", str(stamp), body, header)
