"""Resolves a hallrelay box with python-zeroconf: an mDNS implementation independent of ours.

Usage: zeroconf_resolve.py INSTANCE INTERFACE_ADDRESS
Prints the resolved service as JSON (host name, port, addresses of the host record, TXT), or
exits 1 if nothing answered within 5 s.
"""

import json
import sys

from zeroconf import IPVersion, Zeroconf

SERVICE = "_hallrelay._tcp.local."


def main() -> int:
    instance, interface = sys.argv[1], sys.argv[2]
    zc = Zeroconf(interfaces=[interface], ip_version=IPVersion.V4Only)
    try:
        info = zc.get_service_info(SERVICE, f"{instance}.{SERVICE}", timeout=5000)
        if info is None:
            print("null")
            return 1
        txt = {
            key.decode(): None if value is None else value.decode()
            for key, value in info.properties.items()
        }
        print(
            json.dumps(
                {
                    "server": info.server,
                    "port": info.port,
                    "addresses": info.parsed_addresses(),
                    "txt": txt,
                }
            )
        )
        return 0
    finally:
        zc.close()


if __name__ == "__main__":
    sys.exit(main())
