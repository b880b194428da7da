"""SSH public keys: the ones OpenSSH's ssh-keygen makes are accepted with the fingerprint it prints,
and every other input gets a sentence saying what is wrong."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest

from bulwark.errors import InvalidInput
from bulwark.services.keys import parse_public_key

pytestmark = pytest.mark.timeout(60)


def keygen(tmp_path: Path, kind: str, bits: int | None = None, comment: str = "alice@laptop") -> tuple[str, str]:
    """A new key pair from ssh-keygen: the public key's line and the fingerprint ssh-keygen gives it."""
    path = tmp_path / f"id_{kind}_{bits or 0}"
    size = ["-b", str(bits)] if bits else []
    subprocess.run(["ssh-keygen", "-q", "-t", kind, *size, "-N", "", "-C", comment, "-f", str(path)], check=True)
    listed = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", f"{path}.pub"], capture_output=True,
                            check=True, text=True).stdout.split()
    return Path(f"{path}.pub").read_text(), listed[1]


@pytest.mark.parametrize(("kind", "bits", "algorithm"), [
    ("ed25519", None, "ssh-ed25519"),
    ("ecdsa", 256, "ecdsa-sha2-nistp256"),
    ("ecdsa", 521, "ecdsa-sha2-nistp521"),
    ("rsa", 2048, "ssh-rsa"),
])
def test_the_keys_ssh_keygen_makes_are_accepted_with_its_fingerprint(
    tmp_path: Path, kind: str, bits: int | None, algorithm: str
) -> None:
    line, fingerprint = keygen(tmp_path, kind, bits)
    key = parse_public_key(line)
    assert key.algorithm == algorithm
    assert key.fingerprint == fingerprint and fingerprint.startswith("SHA256:")
    assert key.comment == "alice@laptop"
    assert key.key == " ".join(line.split()[:2])  # stored without the comment
    assert parse_public_key(f"  {key.key}\n").fingerprint == fingerprint  # the comment is not part of it


def test_a_short_rsa_key_is_refused_with_its_size(tmp_path: Path) -> None:
    line, _ = keygen(tmp_path, "rsa", 1024)
    with pytest.raises(InvalidInput, match="2048 to 16384 bits; this one has 1024") as caught:
        parse_public_key(line)
    assert caught.value.field == "key"


def test_an_oversized_rsa_key_is_refused_before_anything_checks_a_signature_with_it() -> None:
    def string(data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + data

    modulus = b"\x00" + (1 << 20000 | 1).to_bytes(2501, "big")  # 20,001 bits, odd; a leading zero: positive
    blob = string(b"ssh-rsa") + string(b"\x01\x00\x01") + string(modulus)
    with pytest.raises(InvalidInput, match="this one has 20001"):
        parse_public_key(f"ssh-rsa {base64.b64encode(blob).decode()}")


def test_a_key_whose_comment_says_private_key_is_still_a_public_key(tmp_path: Path) -> None:
    line, fingerprint = keygen(tmp_path, "ed25519", comment="PRIVATE KEY laptop")
    assert parse_public_key(line).fingerprint == fingerprint


def test_a_private_key_is_refused_without_repeating_it(tmp_path: Path) -> None:
    keygen(tmp_path, "ed25519")
    private = (tmp_path / "id_ed25519_0").read_text()
    with pytest.raises(InvalidInput, match="this is a private key") as caught:
        parse_public_key(private)
    assert private.splitlines()[1] not in str(caught.value)


@pytest.mark.parametrize(("text", "said"), [
    ("", "key is empty"),
    ("   \n", "key is empty"),
    ("ssh-dss AAAAB3NzaC1kc3MAAACBAP", "DSA keys are not accepted"),
    ("hello", "must begin with one of"),
    ('command="/bin/sh" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMqTVf', "options before the key type"),
    ("ssh-ed25519 AAAA", "key is invalid"),
    ("ssh-ed25519 !!!not base64!!!", "key is invalid"),
    ("ssh-rsa " + "A" * 20_000, "key is too long"),
])
def test_what_is_not_a_public_key_is_refused_with_a_sentence(text: str, said: str) -> None:
    with pytest.raises(InvalidInput, match=said):
        parse_public_key(text)


def test_two_keys_at_once_and_a_mislabelled_key_are_refused(tmp_path: Path) -> None:
    one, _ = keygen(tmp_path, "ed25519")
    two, _ = keygen(tmp_path, "ecdsa", 256)
    with pytest.raises(InvalidInput, match="single line"):
        parse_public_key(one + two)
    blob = one.split()[1]
    with pytest.raises(InvalidInput, match="key is invalid"):
        parse_public_key(f"ssh-rsa {blob}")
