#!/usr/bin/env python3
"""Writes the batches and sealed objects of docs/test-vectors/v1.json as fuzz seeds."""
import json, os, pathlib
here = pathlib.Path(__file__).resolve().parent
vectors = json.loads((here.parent / "docs/test-vectors/v1.json").read_text())
for target, key, field in (("batch_decode", "batches", "batch_hex"), ("unseal", "sealed", "sealed_hex")):
    out = here / "corpus" / target
    out.mkdir(parents=True, exist_ok=True)
    for i, entry in enumerate(vectors[key]):
        (out / f"vector-{i}").write_bytes(bytes.fromhex(entry[field]))
print("seeds written to", here / "corpus")
