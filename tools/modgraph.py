#!/usr/bin/env python3
"""Module dependency graph of a Rust crate, from `crate::` paths in its sources.

    python3 tools/modgraph.py [SRC_DIR] [--depth N] [--dot]

Each file under SRC_DIR (default: src) is a module named by its path (src/pack/reader.rs ->
pack::reader; mod.rs names its folder). With --depth 1 (the default) modules are grouped by their
first path segment (pack::reader -> pack), which is the level a reader sees in the file tree.
Prints, for every group of modules that import each other in a circle (a strongly connected
component), the edges inside it with the names that cross them and where, then a summary line:
"N modules, E edges, C circles, largest L". Exit status 1 when there is a circle, so it can be
used as a check. Tests (#[cfg(test)] modules below a line `mod tests`) are left out.
"""
import os, re, sys
from collections import defaultdict

args = [a for a in sys.argv[1:] if not a.startswith("--")]
src = args[0] if args else "src"
depth = 1
if "--depth" in sys.argv:
    depth = int(sys.argv[sys.argv.index("--depth") + 1])
    args = [a for a in args if a != str(depth)]
dot = "--dot" in sys.argv

def module_of(path):
    rel = os.path.relpath(path, src)[:-3].split(os.sep)
    if rel[-1] == "mod":
        rel = rel[:-1]
    if rel in (["lib"], ["main"]):
        return None
    return "::".join(rel[:depth]) if rel else None

PATH = re.compile(r"\bcrate::((?:[a-z_][a-z0-9_]*::)*[A-Za-z_][A-Za-z0-9_]*)")
USE = re.compile(r"\buse\s+crate::\{([^;]*)\};", re.S)
GROUP = re.compile(r"\bcrate::((?:[a-z_][a-z0-9_]*::)+)\{")   # use crate::pack::{A, B}
edges = defaultdict(lambda: defaultdict(set))   # a -> b -> {"name @ file:line"}
mods = set()
for root, _, files in os.walk(src):
    for f in files:
        if not f.endswith(".rs"):
            continue
        p = os.path.join(root, f)
        me = module_of(p)
        if me is None:
            continue
        mods.add(me)
        text = open(p, encoding="utf-8", errors="replace").read()
        cut = re.search(r"^\s*#\[cfg\(test\)\]\s*\n\s*mod tests", text, re.M)
        if cut:
            text = text[:cut.start()]
        hits = []
        for m in PATH.finditer(text):
            hits.append((m.start(), m.group(1)))
        for m in GROUP.finditer(text):
            hits.append((m.start(), m.group(1) + "*"))
        for m in USE.finditer(text):   # use crate::{a::X, b::{Y, Z}}
            for part in re.findall(r"([a-z_][a-z0-9_]*)::", m.group(1)):
                hits.append((m.start(), part + "::*"))
        for pos, q in hits:
            segs = q.split("::")
            target = "::".join(segs[:min(depth, len(segs) - 1)]) if len(segs) > 1 else None
            if not target or target == me or target.split("::")[0] in ("error",) and False:
                continue
            line = text.count("\n", 0, pos) + 1
            edges[me][target].add(f"{segs[-1]} @ {os.path.relpath(p)}:{line}")
            mods.add(target)

# Tarjan's strongly connected components
index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]
sys.setrecursionlimit(10000)
def strong(v):
    index[v] = low[v] = counter[0]; counter[0] += 1; stack.append(v); on.add(v)
    for w in edges[v]:
        if w not in index:
            strong(w); low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop(); on.discard(w); comp.append(w)
            if w == v:
                break
        sccs.append(comp)
for v in sorted(mods):
    if v not in index:
        strong(v)

if dot:
    print("digraph modules {")
    for a in sorted(edges):
        for b in sorted(edges[a]):
            print(f'  "{a}" -> "{b}";')
    print("}")
    sys.exit(0)

circles = [sorted(c) for c in sccs if len(c) > 1]
for i, comp in enumerate(sorted(circles, key=len, reverse=True), 1):
    print(f"circle {i}: {len(comp)} modules: {', '.join(comp)}")
    inside = set(comp)
    for a in comp:
        for b in sorted(edges[a]):
            if b in inside:
                names = sorted(edges[a][b])
                shown = ", ".join(names[:4]) + (f", and {len(names) - 4} more" if len(names) > 4 else "")
                print(f"  {a} -> {b}: {shown}")
n_edges = sum(len(t) for t in edges.values())
largest = max((len(c) for c in circles), default=0)
print(f"{len(mods)} modules, {n_edges} edges, {len(circles)} circles, largest {largest}")
sys.exit(1 if circles else 0)
