#!/usr/bin/env python3
"""Prints the build machine's Debian apt sources as one deb822 file for an arm64 image.

apt reads /etc/apt/sources.list and the *.list and *.sources files in sources.list.d; this
reads the same files, keeps the enabled entries of Debian's archive (signed by Debian's
archive keyring, or under a .../debian or .../debian-security path), and adds the
non-free-firmware component that raspi-firmware and firmware-brcm80211 live in. No mirror
host is written here: whatever the machine uses is used.
"""
import glob
import sys

DEBIAN_KEYRING = "debian-archive-keyring"


def stanzas_from_sources(text):
    for block in text.split("\n\n"):
        fields, key = {}, None
        for line in block.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0] in " \t" and key:
                fields[key] += " " + line.strip()
                continue
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
        if fields.get("Enabled", "yes").lower() == "no" or "deb" not in fields.get("Types", "").split():
            continue
        yield fields


def stanzas_from_list(text):
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if not words or words[0] != "deb":
            continue
        words = words[1:]
        options = {}
        if words and words[0].startswith("["):
            opts = []
            while words:
                w = words.pop(0)
                opts.append(w.strip("[]"))
                if w.endswith("]"):
                    break
            for o in opts:
                k, _, v = o.partition("=")
                options[k] = v
        if len(words) < 3:
            continue
        yield {
            "Types": "deb",
            "URIs": words[0],
            "Suites": words[1],
            "Components": " ".join(words[2:]),
            **({"Signed-By": options["signed-by"]} if "signed-by" in options else {}),
        }


def is_debian(fields):
    uri = fields.get("URIs", "").rstrip("/")
    return DEBIAN_KEYRING in fields.get("Signed-By", "") or uri.endswith(("/debian", "/debian-security"))


def main():
    found = []
    for path in ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*.list")):
        try:
            found += list(stanzas_from_list(open(path).read()))
        except FileNotFoundError:
            pass
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        found += list(stanzas_from_sources(open(path).read()))
    found = [f for f in found if is_debian(f)]
    if not found:
        sys.exit("sources.py: no Debian archive in this machine's apt sources")
    for f in found:
        components = f.get("Components", "main").split()
        for extra in ("main", "non-free-firmware"):
            if extra not in components:
                components.append(extra)
        print("Types: deb")
        print("URIs:", f["URIs"])
        print("Suites:", f["Suites"])
        print("Components:", " ".join(components))
        print("Architectures: arm64")
        if "Signed-By" in f:
            print("Signed-By:", f["Signed-By"])
        print()


main()
