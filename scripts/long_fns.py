#!/usr/bin/env python3
"""Lists non-test functions longer than a bound (default 70 lines), longest first.

Usage: scripts/long_fns.py [MIN_LINES] [--summary]

A function runs from its `fn` line to the closing brace at the same indentation (the code
is rustfmt-formatted). Test code is skipped: files named tests.rs or *_tests.rs, files
under tests/, `#[cfg(test)]` modules and `#[test]` functions. Crates: crdt, regions,
replication, simulations and the server in src/.
"""
import os
import re
import sys

ROOTS = ["crdt/src", "regions/src", "replication/src", "simulations/src", "src"]
FN = re.compile(r"^(\s*)(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?(extern\s+\"[^\"]*\"\s+)?fn\s+([A-Za-z_][A-Za-z0-9_]*)")


def functions(path):
    lines = open(path, encoding="utf-8").read().split("\n")
    skip_until = None  # closing line of a #[cfg(test)] module
    i = 0
    while i < len(lines):
        line = lines[i]
        if skip_until is not None:
            if i >= skip_until:
                skip_until = None
            i += 1
            continue
        if line.strip() == "#[cfg(test)]":
            # The item that follows (a module or function) is test code: skip to its end.
            j = i + 1
            while j < len(lines) and lines[j].strip().startswith("#["):
                j += 1
            if j < len(lines):
                indent = len(lines[j]) - len(lines[j].lstrip())
                if lines[j].rstrip().endswith(";"):
                    skip_until = j
                else:
                    k = j + 1
                    while k < len(lines) and lines[k] != " " * indent + "}":
                        k += 1
                    skip_until = k
            i = j
            continue
        m = FN.match(line)
        if m and not line.rstrip().endswith(";"):
            indent = m.group(1)
            prev = lines[i - 1].strip() if i > 0 else ""
            is_test = prev in ("#[test]", "#[tokio::test]") or prev.startswith("#[test")
            k = i + 1
            if line.rstrip().endswith("}"):
                k = i  # one-line function
            else:
                while k < len(lines) and lines[k] != indent + "}":
                    k += 1
            if not is_test:
                yield m.group(8), i + 1, k - i + 1
        i += 1


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    bound = int(args[0]) if args else 70
    os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    found = []
    for root in ROOTS:
        for dirpath, _, files in os.walk(root):
            if "/tests" in dirpath or dirpath.endswith("tests"):
                continue
            for f in files:
                if not f.endswith(".rs") or f == "tests.rs" or f.endswith("_tests.rs"):
                    continue
                path = os.path.join(dirpath, f)
                for name, line, n in functions(path):
                    if n > bound:
                        found.append((n, f"{path}:{line}", name))
    found.sort(key=lambda t: (-t[0], t[1]))
    if "--summary" not in sys.argv:
        for n, where, name in found:
            print(f"{n:5} {name:40} {where}")
    over100 = sum(1 for n, _, _ in found if n > 100)
    print(f"{len(found)} non-test functions over {bound} lines, {over100} over 100")


if __name__ == "__main__":
    main()
