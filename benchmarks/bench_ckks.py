"""Benchmark of the ``ckks`` mode beside the ``mask`` mode on the same inputs; prints Markdown.

Run from the repository root: ``python -m benchmarks.bench_ckks`` (optionally ``--sites 10
--sizes 100000 1000000``). For each size: per-site encryption time (encode + encrypt + serialise,
mean over sites), bytes a site sends and the expansion over float32, the aggregator's time to check
and add all updates (deserialisation included), the time to serialise the encrypted sum, the key
holder's decryption time, and the max absolute error against the float64 weighted sum beside the
documented bound. Sites are processed one after the other, as they would arrive: the aggregator
holds the running sum plus one update. Then the full-graph masking round on the same inputs.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np

from benchmarks.bench_masking import Row, float_input, prg_throughput, run_secagg
from secagg.he import (
    CkksParameters,
    EncryptedSum,
    KeyHolderContext,
    Layout,
    PublicContext,
    encrypt_update,
)


def _masking_row(n_sites: int, m: int) -> Row:
    """The full-graph, no-dropout masking round on the same inputs (t = a strict majority)."""
    return Row(n=n_sites, m=m, dropout=0.0, holders=None, threshold=n_sites // 2 + 1)


def run(n_sites: int, m: int, params: CkksParameters, seed: int = 0) -> dict[str, float]:
    key_holder = KeyHolderContext.generate(params)
    public = PublicContext.from_bytes(key_holder.public_context_bytes(), params)
    layout = Layout.for_vector(m, params)
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(np.ones(n_sites))
    total = EncryptedSum(public, layout)
    expected = np.zeros(m)
    enc_times, add_times, wire = [], [], []
    peak = 0.0
    for i in range(n_sites):
        x = float_input(_masking_row(n_sites, m), i + 1).astype(np.float64)  # same as masking
        expected += weights[i] * x
        peak = max(peak, float(np.max(np.abs(weights[i] * x))))
        t0 = time.perf_counter()
        chunks = encrypt_update(public, x, float(weights[i]), layout=layout)
        t1 = time.perf_counter()
        total.add(f"site-{i}", chunks)
        t2 = time.perf_counter()
        enc_times.append(t1 - t0)
        add_times.append(t2 - t1)
        wire.append(sum(len(c) for c in chunks))
        del chunks
    t0 = time.perf_counter()
    blob = total.result_bytes()
    t1 = time.perf_counter()
    result = key_holder.decrypt_sum(blob, layout, min_sites=n_sites)
    t2 = time.perf_counter()
    return {
        "chunks": layout.chunk_count,
        "encrypt_s": statistics.mean(enc_times),
        "wire_bytes": statistics.mean(wire),
        "expansion": statistics.mean(wire) / (4 * m),
        "sum_s": sum(add_times),
        "result_s": t1 - t0,
        "result_bytes": len(blob),
        "decrypt_s": t2 - t1,
        "max_err": float(np.max(np.abs(result - expected))),
        "bound": params.precision_bound(n_sites, peak),
        "context_bytes": len(key_holder.public_context_bytes()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=10)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    args = parser.parse_args()
    params = CkksParameters()
    print(
        f"CKKS mode, TenSEAL, N={params.poly_modulus_degree},"
        f" moduli {list(params.coeff_mod_bit_sizes)}"
        f" ({params.total_coeff_modulus_bits} <= {params.security_bound_bits} bits, 128-bit),"
        f" scale 2^{params.global_scale_bits}; n = {args.sites} sites, weighted (FedAvg) sum;"
        f" {platform.processor() or platform.machine()}, Python {platform.python_version()}"
    )
    print()
    print(
        "| m | ciphertexts/site | client encrypt (s) | bytes/site | expansion vs float32 "
        "| server check+sum, all sites (s) | sum serialise (s) | key-holder decrypt (s) "
        "| max abs error | documented bound |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    ckks_rows = []
    for m in args.sizes:
        r = run(args.sites, m, params)
        ckks_rows.append(r)
        print(
            f"| {m:,} | {r['chunks']:,} | {r['encrypt_s']:.3f} | {r['wire_bytes'] / 1e6:.1f} MB "
            f"| {r['expansion']:.2f}x | {r['sum_s']:.3f} | {r['result_s']:.3f} "
            f"| {r['decrypt_s']:.3f} | {r['max_err']:.1e} | {r['bound']:.1e} |"
        )
    print()
    print(f"public context: {r['context_bytes'] / 1e3:.0f} kB (public key only)")
    print()
    print(
        f"Mode `mask` on the same inputs (SecAgg, full graph, n = {args.sites}, t ="
        f" {args.sites // 2 + 1}, no dropout; client = all five stages incl. encoding):"
    )
    print()
    print(
        "| m | client, all stages (s) | bytes/site | expansion vs float32 "
        "| server, all stages (s) | server unmask (s) | ckks client / mask client "
        "| ckks server (sum + decrypt) / mask server |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    gbps = prg_throughput()
    for m, r in zip(args.sizes, ckks_rows, strict=True):
        s = run_secagg(_masking_row(args.sites, m), gbps)
        ckks_server = r["sum_s"] + r["result_s"] + r["decrypt_s"]
        print(
            f"| {m:,} | {s['client_all']:.3f} | {s['upload_bytes'] / 1e6:.1f} MB "
            f"| {s['upload_bytes'] / (4 * m):.2f}x | {s['server_total']:.3f} "
            f"| {s['server_unmask']:.3f} | {r['encrypt_s'] / s['client_all']:.1f}x "
            f"| {ckks_server / s['server_total']:.1f}x |"
        )


if __name__ == "__main__":
    main()
