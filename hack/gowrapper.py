#!/usr/bin/env python3
"""Generate a wrapper go.mod for building a Go project's binaries from its published module.

Why: k8s.io/kubernetes and etcd's server module point their sibling modules at local directories
(`replace k8s.io/api => ./staging/src/k8s.io/api`), which the Go module proxy cannot serve. A
wrapper module that requires the release and rewrites every such local replace to the sibling's
published version builds the exact release. The list is generated from the release's own go.mod
(never hand-copied), so bumping the pin in hack/tools.pins is all it takes.

Usage: gowrapper.py UPSTREAM_GO_MOD MODULE_NAME REQUIRE_PATH REQUIRE_VERSION SIBLING_VERSION
  UPSTREAM_GO_MOD  the release's go.mod (from `go mod download -json`)
  SIBLING_VERSION  version every locally-replaced sibling module is published at
                   (k8s v1.35.4 -> v0.35.4; etcd v3.6.16 -> v3.6.16)
Prints the wrapper go.mod on stdout.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

# Upstream marks modules that must never be depended upon with a bogus local path.
_FORBIDDEN_MARKERS = ("FORBIDDEN_DEPENDENCY",)


def _replace_lines(text: str) -> list[str]:
    """Every replace directive of a go.mod, as 'OLD [VER] => NEW [VER]' strings."""
    lines: list[str] = []
    in_block = False
    for raw in text.splitlines():
        line = raw.split("//", 1)[0].strip()
        if in_block:
            if line == ")":
                in_block = False
            elif line:
                lines.append(line)
        elif re.fullmatch(r"replace\s*\(", line):
            in_block = True
        elif line.startswith("replace "):
            lines.append(line[len("replace ") :].strip())
    return lines


def wrapper_go_mod(
    upstream: str, module: str, require_path: str, require_version: str, sibling_version: str
) -> str:
    directives = [
        line for line in upstream.splitlines() if re.match(r"^(go|godebug)\s", line.strip())
    ]
    replaces: list[str] = []
    for rep in _replace_lines(upstream):
        old, _, new = (part.strip() for part in rep.partition("=>"))
        old_path = old.split()[0]
        new_parts = new.split()
        local = new_parts[0].startswith(("./", "../"))
        if not local:
            replaces.append(f"\t{old} => {new}")
        elif any(marker in new_parts[0] for marker in _FORBIDDEN_MARKERS):
            continue
        else:
            replaces.append(f"\t{old_path} => {old_path} {sibling_version}")
    out = [f"module {module}", "", *directives, "", f"require {require_path} {require_version}", ""]
    if replaces:
        out += ["replace (", *sorted(replaces), ")", ""]
    return "\n".join(out)


def main(argv: list[str]) -> int:
    if len(argv) != 6:
        print(__doc__, file=sys.stderr)
        return 2
    upstream_path, module, require_path, require_version, sibling_version = argv[1:]
    upstream = Path(upstream_path).read_text()
    if not _replace_lines(upstream):
        print(
            f"gowrapper: {upstream_path} has no replace directives; nothing to generate",
            file=sys.stderr,
        )
    sys.stdout.write(
        wrapper_go_mod(upstream, module, require_path, require_version, sibling_version)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
