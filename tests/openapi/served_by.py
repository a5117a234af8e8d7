"""Checks what no OpenAPI validator knows about docs/openapi.yaml: every operation names the
servers that serve it in `x-hallrelay-served-by` (box, cloud or both), its tags say the same
(`box`, `cloud`), and it has an operationId (the generated runs select operations by it).
Prints one line per problem and exits 1 if there is any; `OK` otherwise."""

import sys

import yaml

METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


def main(path: str) -> int:
    with open(path, encoding="utf-8") as f:
        document = yaml.safe_load(f)
    problems = []
    for route, item in document["paths"].items():
        for method, operation in item.items():
            if method not in METHODS:
                continue
            name = f"{method.upper()} {route}"
            served = operation.get("x-hallrelay-served-by")
            if not served or not set(served) <= {"box", "cloud"}:
                problems.append(f"{name}: x-hallrelay-served-by is {served!r}, not box and/or cloud")
                continue
            tagged = {t for t in operation.get("tags", []) if t in ("box", "cloud")}
            if tagged != set(served):
                problems.append(f"{name}: tags say {sorted(tagged)}, x-hallrelay-served-by {sorted(served)}")
            if not operation.get("operationId"):
                problems.append(f"{name}: no operationId")
    for problem in problems:
        print(problem)
    if not problems:
        print("OK")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
