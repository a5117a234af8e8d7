#!/usr/bin/env python3
"""Verifies hallrelay receipts independently of hallrelay's code, from docs/receipts.md alone.

    verify_receipt.py --pin PIN (--cert FILE.pem | --box HOST:PORT) [--from-genesis] RECEIPTS.json

RECEIPTS.json holds a list of receipts as the box returned them (JSON objects). The script
takes the box's certificate (a PEM file, or from the TLS handshake with the box), checks its
pin is PIN, then for every receipt: rebuilds the signed text, verifies the ECDSA P-256 /
SHA-256 signature with the certificate's key, checks a version-2 receipt's `pin`, and checks
each candidate's chain (`prev` is the BLAKE3 of the previous receipt's signed text). Exits 0
when everything verifies, 1 with the reason otherwise. Needs Python's cryptography and blake3.
"""
import argparse
import base64
import hashlib
import json
import ssl
import sys

import blake3
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

GENESIS = "0" * 64


def fail(message):
    print(f"FAIL: {message}")
    sys.exit(1)


def pin_of(cert):
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256//" + base64.b64encode(hashlib.sha256(spki).digest()).decode()


def signed_text(r):
    def number_or_none(value):
        return "none" if value is None else str(value)

    head = [
        f"exam={r['exam']}",
        f"candidate={r['candidate']}",
        f"seq={r['seq']}",
        f"blake3={r['blake3']}",
        f"size={r['size']}",
        f"final={'true' if r['final'] else 'false'}",
        f"received_at={r['received_at']}",
        f"appliance={r['appliance']}",
    ]
    if "clock" not in r:
        lines = ["hallrelay-receipt-v1", *head, f"prev={r['prev']}"]
    else:
        c = r["clock"]
        lines = [
            "hallrelay-receipt-v2",
            *head,
            f"pin={r['pin']}",
            f"prev={r['prev']}",
            f"clock_state={c['state']}",
            f"clock_source={c['source']}",
            f"clock_uncertainty_ms={number_or_none(c.get('uncertainty_ms'))}",
            f"clock_since_sync_ms={number_or_none(c.get('since_sync_ms'))}",
            f"clock_stepped_back_ms={c.get('stepped_back_ms', 0)}",
        ]
    return "".join(line + "\n" for line in lines).encode("utf-8")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pin", required=True, help="the box's pin you trust (sha256//...)")
    parser.add_argument("--cert", help="the box's certificate, PEM")
    parser.add_argument("--box", help="HOST:PORT: take the certificate from the TLS handshake")
    parser.add_argument("--from-genesis", action="store_true",
                        help="each candidate's first receipt must start the chain")
    parser.add_argument("receipts", help="a JSON file: a list of receipts")
    args = parser.parse_args()

    if args.cert:
        with open(args.cert, "rb") as f:
            pem = f.read()
    elif args.box:
        host, port = args.box.rsplit(":", 1)
        pem = ssl.get_server_certificate((host, int(port))).encode()
    else:
        fail("give the box's certificate: --cert FILE or --box HOST:PORT")
    cert = x509.load_pem_x509_certificate(pem)
    key = cert.public_key()
    if not (isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"):
        fail("the certificate's key is not ECDSA P-256")
    if pin_of(cert) != args.pin:
        fail(f"the certificate's pin is {pin_of(cert)}, not the trusted {args.pin}")

    with open(args.receipts) as f:
        receipts = json.load(f)
    if not receipts:
        fail("no receipts to verify")
    last_hash = {}
    for r in receipts:
        name = f"{r['exam']}/{r['candidate']}/{r['seq']}"
        text = signed_text(r)
        if "clock" in r and r.get("pin") != args.pin:
            fail(f"receipt {name} names the key {r.get('pin')}, not the certificate's")
        try:
            key.verify(base64.b64decode(r["signature"]), text, ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, ValueError):
            fail(f"the signature of receipt {name} does not verify")
        chain = (r["appliance"], r["exam"], r["candidate"])
        expected = last_hash.get(chain, GENESIS if args.from_genesis else None)
        if expected is not None and r["prev"] != expected:
            fail(f"receipt {name} does not link to the receipt before it")
        last_hash[chain] = blake3.blake3(text).hexdigest()
        clock = r.get("clock")
        quality = f"{clock['state']} from {clock['source']}" if clock else "no clock (v1)"
        print(f"ok {name} at {r['received_at']}: {quality}")
    print(f"all {len(receipts)} receipts verify")


if __name__ == "__main__":
    main()
