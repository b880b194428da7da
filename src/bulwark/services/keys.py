"""SSH public keys as users and deploy keys register them: what is accepted, and its fingerprint.

A key is given as one line of OpenSSH's ``authorized_keys`` shape, ``<type> <base64> [comment]``,
the way a ``.pub`` file holds it. The parsing is asyncssh's; the rules are ours: ed25519, ECDSA
and security keys, RSA of at least 2048 bits, and no DSA (OpenSSH refuses it since 7.0). The
stored form drops the comment, as GitHub's API returns it, and the SHA256 fingerprint is what
makes a key unique across the site.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from bulwark.errors import InvalidInput

with warnings.catch_warnings():  # asyncssh still imports cryptography's deprecated DSA support
    warnings.simplefilter("ignore")
    import asyncssh

MIN_RSA_BITS = 2048
MAX_RSA_BITS = 16384  # OpenSSH's own limit: a larger modulus only makes every signature check slower
MAX_KEY_TEXT = 16 * 1024  # the longest accepted key line: RSA 16384 is about 2.8 KiB

ACCEPTED = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-rsa",
)


@dataclass(frozen=True)
class PublicKey:
    algorithm: str  # e.g. "ssh-ed25519"
    key: str  # "<type> <base64>", without the comment
    fingerprint: str  # "SHA256:<base64>", as ``ssh-keygen -l`` prints it
    comment: str = ""


def parse_public_key(text: str, *, field: str = "key") -> PublicKey:
    """The key in ``text``, or an ``InvalidInput`` saying what is wrong with it."""
    if len(text) > MAX_KEY_TEXT:
        raise InvalidInput(f"key is too long: at most {MAX_KEY_TEXT} characters", field=field)
    line = text.strip()
    if line.startswith(("-----BEGIN", "PuTTY-User-Key-File")) and "PRIVATE" in line.split("\n", 1)[0]:
        raise InvalidInput("this is a private key: give the public one (the .pub file), and keep this one secret",
                           field=field)
    if not line:
        raise InvalidInput("key is empty", field=field)
    if "\n" in line or "\r" in line:
        raise InvalidInput("key must be a single line: one key at a time", field=field)
    kind = line.split(None, 1)[0]
    if kind in ("ssh-dss", "ssh-dsa"):
        raise InvalidInput("DSA keys are not accepted: use ed25519 (ssh-keygen -t ed25519)", field=field)
    if kind not in ACCEPTED:
        raise InvalidInput(f"key is invalid: it must begin with one of {', '.join(ACCEPTED)} "
                           "(options before the key type are not accepted)", field=field)
    try:
        parsed = asyncssh.import_public_key(line)
    except (asyncssh.KeyImportError, ValueError, TypeError) as exc:
        raise InvalidInput(f"key is invalid: {exc}", field=field) from exc
    algorithm = parsed.get_algorithm()
    if algorithm != kind:
        raise InvalidInput(f"key is invalid: it says {kind} but holds a {algorithm} key", field=field)
    if algorithm == "ssh-rsa":
        bits = int(getattr(parsed.pyca_key, "key_size", 0))
        if not MIN_RSA_BITS <= bits <= MAX_RSA_BITS:
            raise InvalidInput(f"RSA keys must have {MIN_RSA_BITS} to {MAX_RSA_BITS} bits; this one has {bits}",
                               field=field)
    blob = parsed.export_public_key("openssh").decode().split()[1]
    return PublicKey(
        algorithm=algorithm,
        key=f"{algorithm} {blob}",
        fingerprint=parsed.get_fingerprint("sha256"),
        comment=parsed.get_comment() or "",
    )
