#!/usr/bin/env python3
"""An answer envelope opened and sealed outside the hallrelay crates.

HPKE (RFC 9180, base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-128-GCM) is written
here from the RFC on the primitives of Python's `cryptography` package (X25519, HMAC-SHA256,
AES-GCM; Debian's python3-cryptography 38 has them all), and the envelope from
docs/envelope.md. Nothing is shared with the Rust code, which uses the `hpke` crate and ring:
when both open the same bytes, the specification is what they agree on.

    envelope_vector.py open VECTOR.json    open both recipients, print the plaintext
    envelope_vector.py seal VECTOR.json    seal the vector's plaintext anew, print it in hex

VECTOR.json: {"exam_ikm", "restore_code", "exam", "candidate", "seq", "final",
"plaintext", "envelope"} (hex for bytes, text for the rest). `open` exits 1 if a recipient does
not open or the plaintext differs.
"""

import hashlib
import hmac
import json
import os
import struct
import sys

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives import serialization

KEM_ID, KDF_ID, AEAD_ID = 0x0020, 0x0001, 0x0001
KEM_SUITE = b"KEM" + struct.pack(">H", KEM_ID)
HPKE_SUITE = b"HPKE" + struct.pack(">HHH", KEM_ID, KDF_ID, AEAD_ID)
HPKE_INFO = b"hallrelay-envelope-v1"
RECIPIENT_LEN = 1 + 8 + 32 + 32
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


# RFC 5869 with SHA-256.
def extract(salt, ikm):
    return hmac.new(salt, ikm, hashlib.sha256).digest()


def expand(prk, info, length):
    out, block, i = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([i]), hashlib.sha256).digest()
        out += block
        i += 1
    return out[:length]


# RFC 9180 §4: labelled HKDF.
def labeled_extract(suite, salt, label, ikm):
    return extract(salt, b"HPKE-v1" + suite + label + ikm)


def labeled_expand(suite, prk, label, info, length):
    return expand(prk, struct.pack(">H", length) + b"HPKE-v1" + suite + label + info, length)


def raw(public):
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


# RFC 9180 §7.1.3: DeriveKeyPair for X25519.
def derive_key_pair(ikm):
    prk = labeled_extract(KEM_SUITE, b"", b"dkp_prk", ikm)
    sk = labeled_expand(KEM_SUITE, prk, b"sk", b"", 32)
    private = X25519PrivateKey.from_private_bytes(sk)
    return private, raw(private.public_key())


# RFC 9180 §4.1: the shared secret of DHKEM.
def kem_shared_secret(dh, enc, pk_r):
    prk = labeled_extract(KEM_SUITE, b"", b"eae_prk", dh)
    return labeled_expand(KEM_SUITE, prk, b"shared_secret", enc + pk_r, 32)


# RFC 9180 §5.1: the key schedule of base mode; the first message's nonce is the base nonce.
def key_schedule(shared_secret, info):
    psk_id_hash = labeled_extract(HPKE_SUITE, b"", b"psk_id_hash", b"")
    info_hash = labeled_extract(HPKE_SUITE, b"", b"info_hash", info)
    context = b"\x00" + psk_id_hash + info_hash
    secret = labeled_extract(HPKE_SUITE, shared_secret, b"secret", b"")
    key = labeled_expand(HPKE_SUITE, secret, b"key", context, 16)
    nonce = labeled_expand(HPKE_SUITE, secret, b"base_nonce", context, 12)
    return key, nonce


def hpke_open(private, enc, info, aad, ciphertext):
    pk_r = raw(private.public_key())
    dh = private.exchange(X25519PublicKey.from_public_bytes(enc))
    key, nonce = key_schedule(kem_shared_secret(dh, enc, pk_r), info)
    return AESGCM(key).decrypt(nonce, ciphertext, aad)


def hpke_seal(pk_r, info, aad, plaintext):
    ephemeral, enc = derive_key_pair(os.urandom(32))
    dh = ephemeral.exchange(X25519PublicKey.from_public_bytes(pk_r))
    key, nonce = key_schedule(kem_shared_secret(dh, enc, pk_r), info)
    return enc, AESGCM(key).encrypt(nonce, plaintext, aad)


# docs/envelope.md: the restore code and the key it rebuilds.
def restore_secret(code):
    text = code.upper().replace("-", "").replace(" ", "")
    text = text.replace("I", "1").replace("L", "1").replace("O", "0")
    bits = 0
    for c in text:
        bits = (bits << 5) | CROCKFORD.index(c)
    assert len(text) == 28, "a restore code has 28 characters"
    secret = (bits >> 12).to_bytes(16, "big")
    check = int.from_bytes(hashlib.sha256(secret).digest()[:2], "big") >> 4
    assert bits & 0xFFF == check, "the restore code's check does not match"
    return secret


def restore_key_pair(code, exam, candidate):
    info = f"exam={exam}\ncandidate={candidate}\n".encode()
    ikm = expand(extract(b"hallrelay-restore-v1", restore_secret(code)), info, 32)
    return derive_key_pair(ikm)


def context(v):
    final = 1 if v["final"] else 0
    text = f"hallrelay-envelope-v1\nexam={v['exam']}\ncandidate={v['candidate']}\nseq={v['seq']}\nfinal={final}\n"
    return text.encode()


def key_id(public):
    return hashlib.sha256(public).digest()[:8]


def open_envelope(envelope, private, role, ctx):
    assert envelope[:4] == b"HRAE" and envelope[4] == 1, "not a version 1 envelope"
    assert struct.unpack(">HHH", envelope[5:11]) == (KEM_ID, KDF_ID, AEAD_ID), "another suite"
    count = envelope[11]
    header = envelope[: 12 + count * RECIPIENT_LEN]
    kid = key_id(raw(private.public_key()))
    for i in range(count):
        entry = header[12 + i * RECIPIENT_LEN : 12 + (i + 1) * RECIPIENT_LEN]
        if entry[0] != role or entry[1:9] != kid:
            continue
        aad = envelope[:12] + bytes([role]) + kid + ctx
        content_key = hpke_open(private, entry[9:41], HPKE_INFO, aad, entry[41:73])
        body = envelope[len(header) :]
        return AESGCM(content_key).decrypt(b"\x00" * 12, body, header + ctx)
    raise ValueError(f"no recipient of role {role} for this key")


def seal_envelope(plaintext, recipients, ctx):
    content_key = os.urandom(16)
    preamble = b"HRAE\x01" + struct.pack(">HHH", KEM_ID, KDF_ID, AEAD_ID) + bytes([len(recipients)])
    header = preamble
    for role, public in recipients:
        kid = key_id(public)
        enc, wrapped = hpke_seal(public, HPKE_INFO, preamble + bytes([role]) + kid + ctx, content_key)
        header += bytes([role]) + kid + enc + wrapped
    return header + AESGCM(content_key).encrypt(b"\x00" * 12, plaintext, header + ctx)


def self_check():
    """The HPKE above against the one in `cryptography` itself, where it has one (46+):
    its single-shot `encrypt` is base mode with empty aad, `enc || ciphertext`."""
    try:
        from cryptography.hazmat.primitives import hpke
    except ImportError:
        return "cryptography has no HPKE of its own here: the RFC's construction stands alone"
    private = X25519PrivateKey.generate()
    suite = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_128_GCM)
    sealed = suite.encrypt(b"cross-check", private.public_key(), b"info")
    assert hpke_open(private, sealed[:32], b"info", b"", sealed[32:]) == b"cross-check"
    enc, ct = hpke_seal(raw(private.public_key()), b"info", b"", b"other way")
    assert suite.decrypt(enc + ct, private, b"info") == b"other way"
    return "the HPKE here agrees with cryptography's own, both ways"


def main():
    mode, path = sys.argv[1], sys.argv[2]
    with open(path) as f:
        v = json.load(f)
    exam_private, exam_public = derive_key_pair(bytes.fromhex(v["exam_ikm"]))
    restore_private, restore_public = restore_key_pair(v["restore_code"], v["exam"], v["candidate"])
    assert exam_public.hex() == v.get("exam_public", exam_public.hex()), "another exam key"
    assert restore_public.hex() == v.get("restore_public", restore_public.hex()), "another restore key"
    ctx = context(v)
    plaintext = v["plaintext"].encode()
    if mode == "seal":
        print(seal_envelope(plaintext, [(1, exam_public), (2, restore_public)], ctx).hex())
        return 0
    print(self_check(), file=sys.stderr)
    envelope = bytes.fromhex(v["envelope"])
    ok = True
    for name, private, role in [("exam", exam_private, 1), ("restore", restore_private, 2)]:
        opened = open_envelope(envelope, private, role, ctx)
        print(f"{name} recipient: {opened!r}", file=sys.stderr)
        ok &= opened == plaintext
    # Another seq's context must not open.
    other = dict(v, seq=v["seq"] + 1)
    try:
        open_envelope(envelope, exam_private, 1, context(other))
        print("the envelope opened under another seq", file=sys.stderr)
        ok = False
    except Exception:
        pass
    print(plaintext.decode(), end="")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
