"""Signature checks against every vector in docs/twilio-signatures.md (token "12345")."""

from __future__ import annotations

import hashlib

import pytest
from werkzeug.datastructures import ImmutableMultiDict, MultiDict

from protocols.signature import SignatureValidator

TOKEN = "12345"
URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Digits": "1234",
    "From": "+14158675309",
    "To": "+18005551212",
    "Caller": "+14158675309",
}
EXPECTED = "RSOYDt4T1cUTdK1PDd93/VVr8B8="
MULTI_PAIRS = [("Sid", "CA123"), ("SidAccount", "AC123"), ("Digits", "5678"), ("Digits", "1234")]
MULTI_EXPECTED = "IK+Dwps556ElfBT0I3Rgjkr1wJU="
WSS_URL = "wss://bridge.example.com/media/CA3c95a2a6bba5fde93a5dea01e388e8fb"


@pytest.fixture
def validator() -> SignatureValidator:
    return SignatureValidator(TOKEN)


# Vectors.


def test_sign_reproduces_twilios_reference_signature(validator: SignatureValidator) -> None:
    assert validator.sign(URL, PARAMS) == EXPECTED


def test_the_reference_signature_validates(validator: SignatureValidator) -> None:
    assert validator.validate_webhook(URL, PARAMS, EXPECTED)


def test_the_security_page_worked_example_validates(validator: SignatureValidator) -> None:
    url = "https://example.com/myapp.php?foo=1&bar=2"
    params = {
        "CallSid": "CA1234567890ABCDE",
        "Caller": "+14158675310",
        "Digits": "1234",
        "From": "+14158675310",
        "To": "+18005551212",
    }

    assert validator.sign(url, params) == "L/OH5YylLD5NRKLltdqwSvS0BnU="
    assert validator.validate_webhook(url, params, "L/OH5YylLD5NRKLltdqwSvS0BnU=")


def test_a_signature_over_the_url_with_port_443_validates_without_it(
    validator: SignatureValidator,
) -> None:
    with_port = "https://mycompany.com:443/myapp.php?foo=1&bar=2"

    assert validator.sign(with_port, PARAMS) == "kvajT1Ptam85bY51eRf/AJRuM3w="
    assert validator.validate_webhook(URL, PARAMS, "kvajT1Ptam85bY51eRf/AJRuM3w=")
    assert validator.validate_webhook(with_port, PARAMS, EXPECTED)


def test_a_signature_over_an_http_url_with_port_80_validates_without_it(
    validator: SignatureValidator,
) -> None:
    plain = "http://mycompany.com/myapp.php?foo=1&bar=2"

    assert validator.sign("http://mycompany.com:80/myapp.php?foo=1&bar=2", PARAMS) == (
        "0ZXoZLH/DfblKGATFgpif+LLRf4="
    )
    assert validator.validate_webhook(plain, PARAMS, "0ZXoZLH/DfblKGATFgpif+LLRf4=")


def test_an_http_url_keeps_a_custom_port(validator: SignatureValidator) -> None:
    url = "http://mycompany.com:1234/myapp.php?foo=1&bar=2"

    assert validator.sign(url, PARAMS) == "Zmvh+3yNM1Phv2jhDCwEM3q5ebU="
    assert validator.validate_webhook(url, PARAMS, "Zmvh+3yNM1Phv2jhDCwEM3q5ebU=")


def test_an_https_url_with_a_custom_port_validates_the_portless_signature(
    validator: SignatureValidator,
) -> None:
    url = "https://mycompany.com:1234/myapp.php?foo=1&bar=2"

    assert validator.validate_webhook(url, PARAMS, EXPECTED)


# Multi-valued parameters, in every shape a caller may hold them.


@pytest.mark.parametrize(
    "params",
    [
        MultiDict(MULTI_PAIRS),
        ImmutableMultiDict(MULTI_PAIRS),  # Flask's request.form
        {"Sid": ["CA123"], "SidAccount": ["AC123"], "Digits": ["5678", "1234"]},
        {"Sid": ("CA123",), "SidAccount": "AC123", "Digits": ("1234", "5678")},
    ],
    ids=["MultiDict", "ImmutableMultiDict", "dict-of-lists", "dict-of-mixed"],
)
def test_multi_valued_parameters_validate_with_every_value_signed(
    validator: SignatureValidator, params: object
) -> None:
    assert validator.validate_webhook(URL, params, MULTI_EXPECTED)  # type: ignore[arg-type]


def test_a_multidict_with_one_value_dropped_fails(validator: SignatureValidator) -> None:
    params = MultiDict(MULTI_PAIRS[:-1])

    assert not validator.validate_webhook(URL, params, MULTI_EXPECTED)


def test_a_flask_form_of_single_values_validates_like_a_dict(validator: SignatureValidator) -> None:
    assert validator.validate_webhook(URL, ImmutableMultiDict(PARAMS), EXPECTED)


# JSON bodies (bodySHA256).

BODY = '{"property": "value", "boolean": true}'
BODY_HASH = "0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620"
JSON_URL = URL + "&bodySHA256=" + BODY_HASH
JSON_SIGNATURE = "a9nBmqA0ju/hNViExpshrM61xv4="


def test_the_json_body_vector_hashes_and_signs_as_documented(validator: SignatureValidator) -> None:
    assert hashlib.sha256(BODY.encode()).hexdigest() == BODY_HASH
    assert validator.sign(JSON_URL, {}) == JSON_SIGNATURE


def test_a_json_webhook_validates_its_url_and_body_hash(validator: SignatureValidator) -> None:
    assert validator.validate_json_webhook(JSON_URL, BODY, JSON_SIGNATURE)
    assert validator.validate_json_webhook(JSON_URL, BODY.encode(), JSON_SIGNATURE)


def test_a_json_webhook_with_a_tampered_body_fails(validator: SignatureValidator) -> None:
    assert not validator.validate_json_webhook(
        JSON_URL, BODY.replace("true", "false"), JSON_SIGNATURE
    )
    assert not validator.validate_json_webhook(JSON_URL, b"\xff", JSON_SIGNATURE)


def test_a_json_webhook_without_body_sha256_in_the_url_fails(validator: SignatureValidator) -> None:
    assert not validator.validate_json_webhook(URL, BODY, validator.sign(URL, {}))


# Rejections.


@pytest.mark.parametrize(
    "signature", [None, "", "RSOYDt4T1cUTdK1PDd93/VVr8B8", "x" * 28, EXPECTED.lower()]
)
def test_a_missing_or_wrong_signature_fails(
    validator: SignatureValidator, signature: str | None
) -> None:
    assert not validator.validate_webhook(URL, PARAMS, signature)


def test_a_changed_parameter_fails(validator: SignatureValidator) -> None:
    assert not validator.validate_webhook(URL, {**PARAMS, "Digits": "1235"}, EXPECTED)


def test_an_extra_parameter_fails(validator: SignatureValidator) -> None:
    assert not validator.validate_webhook(URL, {**PARAMS, "Extra": ""}, EXPECTED)


def test_a_different_url_fails(validator: SignatureValidator) -> None:
    assert not validator.validate_webhook(URL.replace("foo=1", "foo=2"), PARAMS, EXPECTED)
    assert not validator.validate_webhook(URL.replace("https", "http"), PARAMS, EXPECTED)


def test_a_different_token_fails() -> None:
    assert not SignatureValidator("54321").validate_webhook(URL, PARAMS, EXPECTED)


def test_an_empty_token_is_refused() -> None:
    with pytest.raises(ValueError, match="auth_token"):
        SignatureValidator("")


def test_the_validator_never_shows_its_token() -> None:
    assert "secret-token" not in repr(SignatureValidator("secret-token"))


# The websocket upgrade.


def test_a_websocket_upgrade_signed_over_the_wss_url_validates(
    validator: SignatureValidator,
) -> None:
    assert validator.validate_websocket(WSS_URL, validator.sign(WSS_URL, {}))


def test_a_websocket_upgrade_signed_with_a_trailing_slash_validates(
    validator: SignatureValidator,
) -> None:
    assert validator.validate_websocket(WSS_URL, validator.sign(WSS_URL + "/", {}))


def test_a_websocket_upgrade_signed_over_an_https_url_fails(validator: SignatureValidator) -> None:
    https_url = WSS_URL.replace("wss://", "https://")

    assert not validator.validate_websocket(WSS_URL, validator.sign(https_url, {}))


@pytest.mark.parametrize("signature", [None, "", EXPECTED])
def test_a_websocket_upgrade_with_a_missing_or_wrong_signature_fails(
    validator: SignatureValidator, signature: str | None
) -> None:
    assert not validator.validate_websocket(WSS_URL, signature)


def test_a_websocket_upgrade_for_another_call_fails(validator: SignatureValidator) -> None:
    other = WSS_URL[:-1] + "0"

    assert not validator.validate_websocket(other, validator.sign(WSS_URL, {}))
