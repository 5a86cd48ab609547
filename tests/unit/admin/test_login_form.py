"""The sign-in form's CSRF token: bound to the browser's nonce and to the deployment's secret."""

from __future__ import annotations

from llmproxy.admin.login import LoginFormGuard


def test_the_form_token_is_valid_only_with_its_own_nonce_and_secret() -> None:
    guard = LoginFormGuard()
    nonce = guard.new_nonce()
    token = guard.form_token(nonce)
    assert guard.valid(nonce, token)
    assert not guard.valid(guard.new_nonce(), token)
    assert not guard.valid(nonce, token[:-1] + ("0" if token[-1] != "0" else "1"))
    assert not guard.valid(nonce, None) and not guard.valid(None, token)
    assert not LoginFormGuard().valid(nonce, token)  # another random secret


def test_instances_sharing_a_management_token_accept_each_others_forms_and_no_one_elses() -> None:
    one, other = LoginFormGuard.for_deployment(b"token-a"), LoginFormGuard.for_deployment(b"token-a")
    nonce = one.new_nonce()
    assert other.valid(nonce, one.form_token(nonce))
    assert not LoginFormGuard.for_deployment(b"token-b").valid(nonce, one.form_token(nonce))
    assert not LoginFormGuard.for_deployment(b"").valid(
        nonce, LoginFormGuard.for_deployment(b"").form_token(nonce)
    )
