#!/usr/bin/env python3
"""Module graph of src/: reports import cycles and upward arrows.

Every `crate::a::b` and `super::x` path outside `#[cfg(test)]` modules is an
edge to the deepest module file it names. Layers (DESIGN: data flows down):
cli -> operations -> archive/journal -> db, layout, files -> manifest,
image, digest, error. Exit 1 on any cycle or upward edge.
"""
import pathlib, re, sys

SRC = pathlib.Path(__file__).resolve().parent.parent / "src"

LAYERS = [
    ("cli", ["main", "cli", "cli::*"]),
    ("operations", ["lib", "registry", "add", "gc", "gc::*", "verify", "reindex", "remove",
                    "query", "demo", "install", "archive", "archive::import",
                    "archive::export", "archive::export_plan"]),
    ("archive/journal", ["archive::*", "journal", "journal::*", "sample"]),
    ("db/layout/files", ["db", "db::*", "layout", "files", "stage", "staged"]),
    ("manifest/image/digest/error", ["manifest", "image", "digest", "error",
                                     "progress", "failpoint"]),
]


def module_of(path):
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "mod":
        parts.pop()
    return "::".join(parts)


def strip_tests(text):
    """Drop `#[cfg(test)] mod ... { ... }` blocks (brace matching)."""
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*(pub(\([a-z]+\))?\s+)?mod\s+\w+\s*\{", text):
        if m.start() < i:
            continue
        out.append(text[i:m.start()])
        depth, j = 1, m.end()
        while depth and j < len(text):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        i = j
    out.append(text[i:])
    return "".join(out)


def layer_of(module):
    for rank, (_, pats) in enumerate(LAYERS):
        for p in pats:
            if p == module or (p.endswith("::*") and module.startswith(p[:-1])):
                return rank
    return None


def main():
    files = {module_of(p): p for p in SRC.rglob("*.rs")}
    mods = set(files)
    edges = {m: set() for m in mods}
    for m, p in files.items():
        text = strip_tests(p.read_text())
        text = re.sub(r"//[^\n]*", "", text)
        # expand `use crate::a::{b, c::d}` one level so each leaf is a path
        paths = []
        for g in re.finditer(r"\b(crate|super|self)((?:::\w+)*)::\{([^}]*)\}", text):
            for leaf in g.group(3).split(","):
                leaf = leaf.strip().split(" as ")[0]
                if leaf:
                    paths.append(g.group(1) + g.group(2) + ("" if leaf == "self" else "::" + leaf))
        paths += [x.group(0) for x in re.finditer(r"\b(crate|super)(::\w+)+", text)]
        is_dir_mod = p.name in ("mod.rs", "lib.rs", "main.rs")
        for path in paths:
            segs = path.split("::")
            if segs[0] == "crate":
                base = []
            elif segs[0] == "super":
                base = m.split("::")[:-1] if not is_dir_mod else m.split("::")[:-1]
                if is_dir_mod:
                    base = m.split("::")[:-1]
            elif segs[0] == "self":
                base = m.split("::") if is_dir_mod else m.split("::")
            segs = segs[1:]
            best = None
            for k in range(len(segs), 0, -1):
                cand = "::".join([b for b in base if b] + segs[:k])
                if cand in mods:
                    best = cand
                    break
            if best and best != m:
                edges[m].add(best)
    for m in ("main",):
        edges.get(m, set()).discard("lib")
    bad = 0
    for m in sorted(mods):
        if layer_of(m) is None:
            print(f"unplaced module: {m}")
            bad += 1
    for a in sorted(edges):
        for b in sorted(edges[a]):
            la, lb = layer_of(a), layer_of(b)
            if la is not None and lb is not None and lb < la:
                print(f"upward: {a} ({LAYERS[la][0]}) -> {b} ({LAYERS[lb][0]})")
                bad += 1
    # cycles: Tarjan SCC
    index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]; counter[0] += 1
        stack.append(v); on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w); low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop(); on.discard(w); comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    for c in sccs:
        print("cycle: " + " <-> ".join(c))
        bad += 1
    if "-v" in sys.argv:
        for a in sorted(edges):
            print(a, "->", ", ".join(sorted(edges[a])))
    print(f"{len(mods)} modules, {sum(map(len, edges.values()))} edges, {bad} problem(s)")
    sys.exit(1 if bad else 0)


main()
