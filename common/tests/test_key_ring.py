"""The key ring of one process meets keys another process rotated in."""

from __future__ import annotations

from common.keys import KeyRing, generate_key_pair, rotate_key_pair


def test_a_token_signed_with_a_key_rotated_in_elsewhere_verifies_at_once(tmp_path):
    private, public = tmp_path / "private.pem", tmp_path / "public.pem"
    old_kid = generate_key_pair(private, public)
    # A long interval: the periodic check alone would not see the rotation.
    verifier = KeyRing(public_path=public, reload_interval=3600)
    assert verifier.get(old_kid) is not None

    _, new_kid = rotate_key_pair(private, public, retain_seconds=900)

    assert verifier.get(new_kid) is not None
    assert verifier.get(old_kid) is not None


def test_an_unknown_kid_is_refused_when_the_files_have_not_changed(tmp_path):
    private, public = tmp_path / "private.pem", tmp_path / "public.pem"
    generate_key_pair(private, public)
    verifier = KeyRing(public_path=public, reload_interval=3600)

    assert verifier.get("no-such-kid") is None


def test_a_ring_built_from_pem_text_never_looks_at_files(tmp_path):
    private, public = tmp_path / "private.pem", tmp_path / "public.pem"
    kid = generate_key_pair(private, public)
    ring = KeyRing(public_pem=public.read_text(), reload_interval=3600)

    assert ring.get(kid) is not None
    assert ring.get("no-such-kid") is None
