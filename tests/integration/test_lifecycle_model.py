"""The key lifecycle against a reference model: random sequences of create, rotate, rollback,
revoke, destroy (schedule), cancel, encrypt and decrypt on a live server, each answer (status and
body) checked against what a small model written here says it must be.

The model is written from the rules docs/api.md states, independently of
ferrohsm/domain/lifecycle.py:
- active: everything is allowed; rotate adds a version that becomes primary; rollback makes an
  existing, other version primary;
- revoked: no rotate, rollback or revoke, no encrypt (409); decrypt keeps working;
- destroy_scheduled: every cryptographic operation and every move but cancel is a 409; cancel
  goes back to the state the key had before (the grace period, 24 hours, never ends here);
- a ciphertext decrypts to its plaintext with the version it names, whatever the primary is
  now; a ciphertext made by another key is the one opaque 400.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule
from live import LiveServer

ADMIN, SERVICE = "administrator", "service"
ACTIVE, REVOKED, SCHEDULED = "active", "revoked", "destroy_scheduled"


@dataclass
class ModelKey:
    """What the model knows of one key."""

    id: str
    state: str = ACTIVE
    before_destroy: str | None = None  # the state cancel-destroy returns to
    versions: int = 1
    primary: int = 1
    revision: int = 0
    # ciphertext -> (plaintext, version it was made with)
    ciphertexts: dict[str, tuple[bytes, int]] = field(default_factory=dict)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    srv = LiveServer(tmp_path_factory.mktemp("lifecycle-model"), overrides={
        ("rate_limit", "requests_per_second"): 1e6, ("rate_limit", "burst"): 1_000_000,
        ("rate_limit", "ip_requests_per_second"): 1e6, ("rate_limit", "ip_burst"): 1_000_000})
    yield srv
    srv.close()


class Lifecycle(RuleBasedStateMachine):
    srv: LiveServer  # set by the test before the machine runs

    keys = Bundle("keys")

    def __init__(self) -> None:
        super().__init__()
        self.model: dict[str, ModelKey] = {}

    # -- helpers ---------------------------------------------------------------------------

    def call(self, method: str, path: str, body: Any = None,
             role: str = ADMIN) -> tuple[int, Any]:
        status, _, payload = self.srv.call(method, path, body, role=role)
        return status, payload

    def check_key(self, key: ModelKey, body: dict[str, Any]) -> None:
        """A Key answer says exactly what the model says, and its revision moved forward."""
        assert body["id"] == key.id
        assert body["state"] == key.state, (body["state"], key)
        assert body["primary_version"] == key.primary, (body["primary_version"], key)
        assert [v["version"] for v in body["versions"]] == list(range(1, key.versions + 1))
        assert all(v["state"] == "enabled" for v in body["versions"])
        assert (body["destroy_after"] is not None) == (key.state == SCHEDULED)
        assert body["revision"] >= key.revision
        key.revision = body["revision"]

    def expect_refusal(self, status: int, body: Any, code: int) -> None:
        names = {400: "bad_request", 409: "conflict"}
        assert status == code, (status, body)
        assert body["error"]["code"] == names[code]

    def move(self, key: ModelKey, verb: str, allowed: bool, body: Any = None) -> None:
        """POST a lifecycle move; when the model allows it, the answer is the key it predicts
        (the caller has already updated the model), else a 409 that changes nothing."""
        status, answer = self.call("POST", f"/v1/keys/{key.id}/{verb}", body)
        if allowed:
            assert status == 200, (verb, status, answer, key)
            self.check_key(key, answer)
        else:
            self.expect_refusal(status, answer, 409)

    # -- rules -----------------------------------------------------------------------------

    @rule(target=keys)
    def create(self) -> str:
        status, body = self.call("POST", "/v1/keys", {"algorithm": "aes-256-gcm",
                                                      "usage": "encrypt"})
        assert status == 201, body
        key = ModelKey(body["id"])
        self.check_key(key, body)
        self.model[key.id] = key
        return key.id

    @rule(key_id=keys)
    def rotate(self, key_id: str) -> None:
        key = self.model[key_id]
        allowed = key.state == ACTIVE
        if allowed:
            key.versions += 1
            key.primary = key.versions
        self.move(key, "rotate", allowed, {})

    @rule(key_id=keys, data=st.data())
    def rollback(self, key_id: str, data: st.DataObject) -> None:
        key = self.model[key_id]
        # mostly another version it has; sometimes any, or the next one (it does not have yet)
        others = [v for v in range(1, key.versions + 1) if v != key.primary]
        anything = st.integers(1, key.versions + 1)
        version = data.draw(st.sampled_from(others) | anything if others else anything,
                            label="version")
        allowed = key.state == ACTIVE and version <= key.versions and version != key.primary
        if allowed:
            key.primary = version
        self.move(key, "rollback", allowed, {"version": version})

    @rule(key_id=keys)
    def revoke(self, key_id: str) -> None:
        key = self.model[key_id]
        allowed = key.state == ACTIVE
        if allowed:
            key.state = REVOKED
        self.move(key, "revoke", allowed, {"reason": "model says so"})

    @rule(key_id=keys)
    def destroy(self, key_id: str) -> None:
        key = self.model[key_id]
        allowed = key.state in (ACTIVE, REVOKED)
        if allowed:
            key.before_destroy, key.state = key.state, SCHEDULED
        self.move(key, "destroy", allowed)

    @rule(key_id=keys)
    def cancel_destroy(self, key_id: str) -> None:
        key = self.model[key_id]
        allowed = key.state == SCHEDULED
        if allowed:
            assert key.before_destroy is not None
            key.state, key.before_destroy = key.before_destroy, None
        self.move(key, "cancel-destroy", allowed)

    @rule(key_id=keys, plaintext=st.binary(max_size=64))
    def encrypt(self, key_id: str, plaintext: bytes) -> None:
        key = self.model[key_id]
        status, body = self.call("POST", f"/v1/keys/{key.id}/encrypt",
                                 {"plaintext": base64.b64encode(plaintext).decode()}, SERVICE)
        if key.state != ACTIVE:
            self.expect_refusal(status, body, 409)
            return
        assert status == 200, body
        assert body["key_id"] == key.id and body["key_version"] == key.primary
        assert body["ciphertext"].startswith(f"fhsm:v{key.primary}:")
        key.ciphertexts[body["ciphertext"]] = (plaintext, key.primary)

    @rule(key_id=keys, data=st.data())
    def decrypt(self, key_id: str, data: st.DataObject) -> None:
        key = self.model[key_id]
        own = sorted(key.ciphertexts)
        foreign = sorted(c for k in self.model.values() if k.id != key.id for c in k.ciphertexts)
        if not own and not foreign:
            return
        ciphertext = data.draw(st.sampled_from(own + foreign), label="ciphertext")
        status, body = self.call("POST", f"/v1/keys/{key.id}/decrypt",
                                 {"ciphertext": ciphertext}, SERVICE)
        if key.state == SCHEDULED:
            self.expect_refusal(status, body, 409)
        elif ciphertext not in key.ciphertexts:
            self.expect_refusal(status, body, 400)  # another key's: the one opaque refusal
        else:
            plaintext, version = key.ciphertexts[ciphertext]
            assert status == 200, body
            assert base64.b64decode(body["plaintext"]) == plaintext
            assert body["key_version"] == version

    @rule(key_id=keys)
    def describe(self, key_id: str) -> None:
        key = self.model[key_id]
        status, body = self.call("GET", f"/v1/keys/{key.id}", role="auditor")
        assert status == 200, body
        self.check_key(key, body)

    @invariant()
    def states_are_known(self) -> None:
        for key in self.model.values():
            assert key.state in (ACTIVE, REVOKED, SCHEDULED)
            assert 1 <= key.primary <= key.versions


def test_lifecycle_follows_the_model(server: LiveServer) -> None:
    Lifecycle.srv = server
    machine = Lifecycle.TestCase
    machine.settings = settings(max_examples=25, stateful_step_count=30, derandomize=True,
                                deadline=None, database=None,
                                suppress_health_check=[HealthCheck.too_slow])
    machine().runTest()
