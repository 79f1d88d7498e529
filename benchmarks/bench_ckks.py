"""Benchmark of the ``ckks`` mode beside the ``mask`` mode on the same inputs; writes its section.

Run from the repository root: ``python -m benchmarks.bench_ckks`` (optionally ``--sites 10
--sizes 100000 1000000``); it writes ``benchmarks/results/ckks.md`` and re-assembles
``benchmarks/RESULTS.md``. For each size, the default path end to end (signed chunks, verified
composition, flooded decryption, a fresh key):

* per site: encryption and signing time (encode + encrypt + serialise + frame + Ed25519 over the
  BLAKE2b digest of every chunk; mean over sites) and bytes sent;
* aggregator: checking (framing, signatures, ciphertexts) and adding all updates, and serialising
  the encrypted sum;
* key holder: bytes received (the sum plus every site's signed chunks), the verification (every
  signature and ciphertext checked, the sum recomputed and compared with the aggregator's) and the
  flooded decryption, timed apart; the flooding standard deviation and the max absolute error of
  the released values against the float64 weighted sum, beside the released bound.

Sites are processed one after the other, as they would arrive. Then the full-graph masking round
on the same inputs.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np

from benchmarks._report import assemble, machine_lines, write_section
from benchmarks.bench_masking import Row, float_input, prg_throughput, run_secagg
from secagg.crypto import IdentityKey
from secagg.he import (
    CkksParameters,
    EncryptedSum,
    KeyHolderContext,
    Layout,
    PublicContext,
    encrypt_update,
)
from secagg.he.packing import parse_sum

ROUND_ID = 1


def _masking_row(n_sites: int, m: int) -> Row:
    """The full-graph, no-dropout masking round on the same inputs (t = a strict majority)."""
    return Row(n=n_sites, m=m, dropout=0.0, holders=None, threshold=n_sites // 2 + 1)


def run(n_sites: int, m: int, params: CkksParameters, seed: int = 0) -> dict[str, float]:
    key_holder = KeyHolderContext.generate(params)  # default flooding: 40 bits, one decryption
    public = PublicContext.from_bytes(key_holder.public_context_bytes(), params)
    layout = Layout.for_vector(m, params)
    identities = {f"site-{i}": IdentityKey.generate() for i in range(n_sites)}
    roster = {site: key.public_key for site, key in identities.items()}
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(np.ones(n_sites))
    total = EncryptedSum(public, layout, round_id=ROUND_ID, roster=roster)
    expected = np.zeros(m)
    enc_times, add_times, wire = [], [], []
    forwarded: dict[str, list[bytes]] = {}
    peak = 0.0
    for i, (site, identity) in enumerate(identities.items()):
        x = float_input(_masking_row(n_sites, m), i + 1).astype(np.float64)  # same as masking
        expected += weights[i] * x
        peak = max(peak, float(np.max(np.abs(weights[i] * x))))
        t0 = time.perf_counter()
        chunks = encrypt_update(
            public,
            x,
            float(weights[i]),
            identity=identity,
            round_id=ROUND_ID,
            site_id=site,
            layout=layout,
        )
        t1 = time.perf_counter()
        total.add(site, chunks)
        t2 = time.perf_counter()
        enc_times.append(t1 - t0)
        add_times.append(t2 - t1)
        wire.append(sum(len(c) for c in chunks))
        forwarded[site] = chunks  # the aggregator forwards them to the key holder as received
    t0 = time.perf_counter()
    blob = total.result_bytes()
    t1 = time.perf_counter()
    # The verification phase alone (the same private steps decrypt_sum runs first) ...
    signers, forged, recomputed = key_holder._verified_sum(forwarded, layout, ROUND_ID, roster)
    if recomputed is None or forged or len(signers) != n_sites:
        raise RuntimeError("the benchmark's own round did not verify")
    parsed = parse_sum(blob, params=params, key_id=key_holder.key_id)
    key_holder._check_same_sum(parsed.chunks, recomputed, layout)
    t2 = time.perf_counter()
    del recomputed
    # ... then the default path end to end (verification again, then the flooded decryption).
    result = key_holder.decrypt_sum(
        blob, forwarded, layout=layout, round_id=ROUND_ID, roster=roster, min_sites=n_sites
    )
    t3 = time.perf_counter()
    verify_s = t2 - t1
    site_bytes = statistics.mean(wire)
    return {
        "chunks": layout.chunk_count,
        "encrypt_s": statistics.mean(enc_times),
        "wire_bytes": site_bytes,
        "expansion": site_bytes / (4 * m),
        "sum_s": sum(add_times),
        "result_s": t1 - t0,
        "result_bytes": len(blob),
        "holder_bytes": len(blob) + sum(wire),
        "verify_s": verify_s,
        "decrypt_s": max(t3 - t2 - verify_s, 0.0),
        "decrypt_sum_s": t3 - t2,
        "noise": result.noise_stddev,
        "max_err": float(np.max(np.abs(result.values - expected))),
        "bound": key_holder.flooding.released_error_bound(params, n_sites, peak, m),
        "context_bytes": len(key_holder.public_context_bytes()),
    }


def render(n_sites: int, sizes: list[int], params: CkksParameters) -> tuple[str, list[dict]]:
    lines = [
        "## CKKS mode (benchmarks/bench_ckks.py)",
        "",
        *machine_lines(),
        f"- TenSEAL CKKS, N={params.poly_modulus_degree}, moduli {list(params.coeff_mod_bit_sizes)}"
        f" ({params.total_coeff_modulus_bits} <= {params.security_bound_bits} bits, 128-bit),"
        f" scale 2^{params.global_scale_bits}; n = {n_sites} sites, weighted (FedAvg) sum;"
        f" {platform.processor() or platform.machine()}, Python {platform.python_version()}",
        "- Default path: chunks signed (Ed25519), aggregator checks signatures, key holder"
        " verifies every signed ciphertext, recomputes and compares the sum, then decrypts with"
        " 40-bit flooding (fresh key, one decryption)",
        "- Command: `python -m benchmarks.bench_ckks`",
        "",
        "| m | ciphertexts/site | client encrypt+sign (s) | bytes/site | expansion vs float32 "
        "| server verify+sum, all sites (s) | sum serialise (s) | key-holder bytes in "
        "| key-holder verify+recompute (s) | key-holder flooded decrypt (s) | flooding std "
        "| max abs error | released bound |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows = []
    for m in sizes:
        r = run(n_sites, m, params)
        rows.append(r)
        lines.append(
            f"| {m:,} | {r['chunks']:,} | {r['encrypt_s']:.3f} | {r['wire_bytes'] / 1e6:.1f} MB "
            f"| {r['expansion']:.2f}x | {r['sum_s']:.3f} | {r['result_s']:.3f} "
            f"| {r['holder_bytes'] / 1e6:.0f} MB | {r['verify_s']:.3f} | {r['decrypt_s']:.3f} "
            f"| {r['noise']:.1e} | {r['max_err']:.1e} | {r['bound']:.1e} |"
        )
    last = rows[-1]
    lines += [
        "",
        f"Key-holder bandwidth at m = {sizes[-1]:,}: the encrypted sum "
        f"({last['result_bytes'] / 1e6:.1f} MB) plus the {n_sites} sites' signed chunks "
        f"({n_sites} x {last['wire_bytes'] / 1e6:.1f} MB): {last['holder_bytes'] / 1e6:.0f} MB, "
        f"of which {(last['holder_bytes'] - last['result_bytes']) / 1e6:.0f} MB "
        f"({(last['holder_bytes'] - last['result_bytes']) / last['result_bytes']:.1f}x the sum) "
        "is the extra cost of verified composition. Public context: "
        f"{last['context_bytes'] / 1e3:.0f} kB (public key only), one per round (fresh key).",
        "",
    ]
    return "\n".join(lines), rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=10)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    args = parser.parse_args()
    params = CkksParameters()
    text, ckks_rows = render(args.sites, args.sizes, params)
    lines = [
        text,
        f"Mode `mask` on the same inputs (SecAgg, full graph, n = {args.sites}, t ="
        f" {args.sites // 2 + 1}, no dropout; client = all five stages incl. encoding):",
        "",
        "| m | client, all stages (s) | bytes/site | expansion vs float32 "
        "| server, all stages (s) | server unmask (s) | ckks client / mask client "
        "| ckks server + key holder / mask server |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    gbps = prg_throughput()
    for m, r in zip(args.sizes, ckks_rows, strict=True):
        s = run_secagg(_masking_row(args.sites, m), gbps)
        ckks_server = r["sum_s"] + r["result_s"] + r["decrypt_sum_s"]
        lines.append(
            f"| {m:,} | {s['client_all']:.3f} | {s['upload_bytes'] / 1e6:.1f} MB "
            f"| {s['upload_bytes'] / (4 * m):.2f}x | {s['server_total']:.3f} "
            f"| {s['server_unmask']:.3f} | {r['encrypt_s'] / s['client_all']:.1f}x "
            f"| {ckks_server / s['server_total']:.1f}x |"
        )
    markdown = "\n".join(lines) + "\n"
    write_section("ckks", markdown)
    assemble()
    print(markdown)


if __name__ == "__main__":
    main()
