"""API-key encryption at rest: the upstream's enc:v1 format, AES-256-GCM, plaintext tolerated."""

from __future__ import annotations

import base64
import os

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from llmproxy.store.crypto import check_key, decrypt_api_key, encrypt_api_key

KEY = bytes(range(32))
SECRET = "sk-proj-abcdefghijklmnopqrstuvwxyz"


def test_encrypted_value_round_trips_to_the_plaintext():
    assert decrypt_api_key(KEY, encrypt_api_key(KEY, SECRET)) == SECRET


def test_encrypted_value_is_prefixed_and_hides_the_plaintext():
    stored = encrypt_api_key(KEY, SECRET)
    assert stored.startswith("enc:v1:")
    assert SECRET not in stored


def test_each_encryption_uses_a_fresh_nonce():
    assert encrypt_api_key(KEY, SECRET) != encrypt_api_key(KEY, SECRET)


def test_format_is_base64_of_nonce_then_aes_gcm_ciphertext_and_tag():
    blob = base64.b64decode(encrypt_api_key(KEY, SECRET).removeprefix("enc:v1:"))
    nonce, sealed = blob[:12], blob[12:]
    assert len(sealed) == len(SECRET) + 16
    assert AESGCM(KEY).decrypt(nonce, sealed, None) == SECRET.encode()


def test_value_written_by_the_upstream_format_decrypts():
    nonce = os.urandom(12)
    stored = "enc:v1:" + base64.b64encode(nonce + AESGCM(KEY).encrypt(nonce, b"sk-legacy", None)).decode()
    assert decrypt_api_key(KEY, stored) == "sk-legacy"


@pytest.mark.parametrize("key", [KEY, None])
def test_plaintext_without_the_prefix_is_returned_as_is(key):
    assert decrypt_api_key(key, SECRET) == SECRET


def test_empty_api_key_stays_empty():
    assert encrypt_api_key(KEY, "") == ""


def test_encrypted_value_without_a_key_names_encryption_key():
    with pytest.raises(ValueError, match="ENCRYPTION_KEY"):
        decrypt_api_key(None, encrypt_api_key(KEY, SECRET))


def test_encrypted_value_with_the_wrong_key_names_encryption_key():
    with pytest.raises(ValueError, match="ENCRYPTION_KEY"):
        decrypt_api_key(os.urandom(32), encrypt_api_key(KEY, SECRET))


def test_tampered_ciphertext_is_refused():
    stored = encrypt_api_key(KEY, SECRET)
    blob = bytearray(base64.b64decode(stored.removeprefix("enc:v1:")))
    blob[-1] ^= 1
    with pytest.raises(ValueError):
        decrypt_api_key(KEY, "enc:v1:" + base64.b64encode(bytes(blob)).decode())


@pytest.mark.parametrize("stored", ["enc:v1:not base64!", "enc:v1:" + base64.b64encode(b"short").decode()])
def test_malformed_encrypted_value_is_a_value_error(stored):
    with pytest.raises(ValueError):
        decrypt_api_key(KEY, stored)


@pytest.mark.parametrize("key", [b"", b"x" * 16, b"x" * 31, b"x" * 33])
def test_key_must_be_32_bytes(key):
    with pytest.raises(ValueError, match="32 bytes"):
        encrypt_api_key(key, SECRET)
    with pytest.raises(ValueError, match="32 bytes"):
        check_key(key)


def test_no_key_is_a_valid_choice():
    check_key(None)
