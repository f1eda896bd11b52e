"""A ChromaDB application for strata's tests: builds a store, keeps writing to it, and checks
restored copies.

    chroma_app.py build STORE N            add documents 0..N-1
    chroma_app.py write STORE --rate R     keep adding documents N, N+1, ... until SIGTERM;
                                           prints the number of documents added so far, one
                                           line per second, and the final count on exit
    chroma_app.py check STORE...           open each store and check it (one JSON line each)

Every document's embedding is derived from its number, so a check needs nothing but the store.
"""

import json
import random
import signal
import sqlite3
import sys
import time

DIM = 16
COLLECTION = "docs"


def doc_id(i):
    return f"doc-{i:07d}"


def embedding(i):
    r = random.Random(i)
    return [r.random() for _ in range(DIM)]


# Low-dimensional embeddings, a denser graph and a wide search keep HNSW's approximate answers
# exact on this data (measured: every one of 25,000 documents, 20,000 added in batches of 1,000
# and 5,000 in batches of 10, is its own nearest neighbour; with 64 dimensions and the default
# 16 neighbours, 4 were not, in the live store itself). So a document that is not its own
# nearest neighbour means a damaged store, not an unlucky search.
HNSW = {"hnsw:space": "l2", "hnsw:M": 32, "hnsw:construction_ef": 200, "hnsw:search_ef": 200}


def open_collection(path, create=False):
    import chromadb

    client = chromadb.PersistentClient(path=path)
    if create:
        return client.get_or_create_collection(COLLECTION, metadata=HNSW)
    return client.get_collection(COLLECTION)


def add(col, start, end):
    ids = list(range(start, end))
    col.add(
        ids=[doc_id(i) for i in ids],
        embeddings=[embedding(i) for i in ids],
        documents=[f"document number {i}" for i in ids],
        metadatas=[{"n": i} for i in ids],
    )


def build(path, n):
    col = open_collection(path, create=True)
    start = col.count()
    for s in range(start, n, 1000):
        add(col, s, min(n, s + 1000))
    print(col.count(), flush=True)


def write(path, rate, batch=10):
    col = open_collection(path)
    n = col.count()
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    began = time.monotonic()
    last_report = began
    added = 0
    while not stop:
        add(col, n, n + batch)
        n += batch
        added += batch
        now = time.monotonic()
        if now - last_report >= 1.0:
            print(json.dumps({"count": n, "rate": added / (now - began)}), flush=True)
            last_report = now
        ahead = added / rate - (now - began)
        if ahead > 0:
            time.sleep(ahead)
    now = time.monotonic()
    print(json.dumps({"count": n, "rate": added / (now - began), "final": True}), flush=True)


def check(path, samples=200, newest=50):
    """Opens a copy of a store and checks it: SQLite integrity, a gap-free prefix of documents,
    and each of a sample of documents found as its own nearest neighbour."""
    out = {"store": path, "ok": False}
    try:
        # Read-write, as the application would open it: a hot journal in the copy is rolled back.
        db = sqlite3.connect(f"file:{path}/chroma.sqlite3?mode=rw", uri=True)
        integrity = db.execute("PRAGMA integrity_check").fetchall()
        db.close()
        out["integrity"] = integrity[0][0] if len(integrity) == 1 else str(integrity[:5])
        if out["integrity"] != "ok":
            out["error"] = "integrity_check: " + out["integrity"]
            return out
        col = open_collection(path)
        count = col.count()
        out["count"] = count
        got = col.get(include=[])["ids"]
        numbers = sorted(int(i[4:]) for i in got)
        if numbers != list(range(len(numbers))) or len(numbers) != count:
            missing = sorted(set(range(max(numbers, default=-1) + 1)) - set(numbers))
            out["error"] = f"not a gap-free prefix: {len(numbers)} ids, {len(missing)} missing"
            return out
        picks = sorted(set(random.Random(count).sample(range(count), min(samples, count))
                           + list(range(max(0, count - newest), count))))
        res = col.query(query_embeddings=[embedding(i) for i in picks], n_results=1,
                        include=["documents"])
        wrong = [i for i, ids in zip(picks, res["ids"]) if ids != [doc_id(i)]]
        if wrong:
            out["error"] = f"{len(wrong)} of {len(picks)} documents not their own nearest neighbour, e.g. {doc_id(wrong[0])}"
            return out
        out["ok"] = True
    except Exception as e:  # an unusable copy: that is the finding, not a crash of the checker
        out["error"] = f"{type(e).__name__}: {e}"
    return out


def main(argv):
    cmd = argv[1]
    if cmd == "build":
        build(argv[2], int(argv[3]))
    elif cmd == "write":
        rate = float(argv[argv.index("--rate") + 1]) if "--rate" in argv else 500.0
        write(argv[2], rate)
    elif cmd == "check":
        for path in argv[2:]:
            print(json.dumps(check(path)), flush=True)
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main(sys.argv)
