"""secagg's masking/unmasking against Flower's SecAgg+ and against the hardware floor.

Run from the repository root: ``python -m benchmarks`` (all sections) or
``python -m benchmarks.bench_masking [--quick] [--no-flower]``.

For each grid row both implementations process identical float inputs, the same neighbour graph,
degree k (share holders, self included, as Flower counts them), threshold t and dropout set (10 %
drop after sharing keys, before sending their masked input). Measured in the same process run:

* client mask: secagg's mask expansion and combination alone (seeds in, masked vector out);
* client masked-input stage (median per client): encoding + the whole masked-input stage
  (decrypting shares, key agreement, seed derivation, masking, signing); Flower: its stage 2
  (decrypting shares, quantisation, key agreement, masks) -- this is the figure Flower reports;
* client all stages: every client-side computation of the round (median per client);
* server unmask: closing the unmask stage (Shamir reconstruction, key agreement for dropped
  neighbours, mask regeneration, final reduction); Flower: its unmask stage minus dequantisation;
* bytes per client: the packed masked vector (``pack_bits`` at b = 32) vs Flower's
  ``ndarray_to_bytes``
  of its int64 vector;
* server peak memory: tracemalloc over the unmask stage (on a clone of the session) plus the
  accumulator and one in-flight masked input, which the server holds during the masked-input stage;
* floor: ``fill_mask`` throughput (1 MiB reused buffer, one core) and a plain numpy sum of the n
  encoded inputs. Server floor = (masks regenerated x 4m bytes) / throughput + one numpy pass over
  the accumulator; client floor = (1 + neighbours) x 4m / throughput + one pass.
"""

from __future__ import annotations

import argparse
import copy
import gc
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

import secagg.protocol.client as client_module
import secagg.protocol.server as server_module
from benchmarks._report import machine_lines, write_section
from secagg.crypto import IdentityKey, KeyAgreementKey, fill_mask, random_seed, uniform_floats
from secagg.encoding import FixedPointEncoding
from secagg.kernels import add_masks, get_num_threads, pack_bits, stochastic_round
from secagg.protocol import (
    AdversaryClass,
    ClientSession,
    MemoryLedger,
    RoundConfig,
    ServerSession,
    SitePolicy,
    Stage,
)


def bench_policy(config: RoundConfig) -> SitePolicy:
    """Sites that accept the grid's (k, t), Flower's own choices, so both sides run the same
    parameters: a relaxed policy, by name (speed, not safety, is measured here)."""
    return SitePolicy(
        roster=config.roster, adversary=AdversaryClass.CURIOUS_SERVER, corrupt_fraction=0
    )


CLIP = 8.0  # Flower's default clipping range, for both


@dataclass(frozen=True)
class Row:
    n: int
    m: int
    dropout: float
    holders: int | None  # k as Flower counts it (neighbours + self); None = full graph
    threshold: int
    flower: bool = True
    note: str = ""

    @property
    def label(self) -> str:
        graph = "full" if self.holders is None else f"k={self.holders}"
        return f"n={self.n:,}, m={self.m:,}, {self.dropout:.0%}, {graph}/t={self.threshold}"


GRID: tuple[Row, ...] = (
    Row(10, 100_000, 0.0, 9, 5),
    Row(100, 100_000, 0.1, 15, 8),
    Row(20, 1_000_000, 0.1, 11, 6),
    Row(100, 100_000, 0.1, None, 51),
    Row(1000, 100_000, 0.1, 37, 19, note="k/t from secagg's parameter finder (c=5 %, curious)"),
    Row(10, 10_000_000, 0.0, 9, 5),
    Row(100, 1_000_000, 0.1, None, 51, flower=False, note="memory row; Flower skipped"),
)
QUICK: tuple[Row, ...] = (
    Row(10, 100_000, 0.0, 9, 5),
    Row(100, 100_000, 0.1, 15, 8),
)


# --------------------------------------------------------------------------------------------
# Timing helpers
# --------------------------------------------------------------------------------------------


class Timer:
    def __init__(self) -> None:
        self.total = 0.0

    @contextmanager
    def __call__(self) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.total += time.perf_counter() - t0


@dataclass
class Probe:
    """Wraps a module-level function to time its calls and remember its arguments' sizes."""

    seconds: list[float] = field(default_factory=list)
    masks: list[int] = field(default_factory=list)


@contextmanager
def probe(module: Any, name: str, record: Probe, count_masks: bool) -> Iterator[None]:
    original: Callable[..., Any] = getattr(module, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        result = original(*args, **kwargs)
        record.seconds.append(time.perf_counter() - t0)
        if count_masks:
            record.masks.append(len(args[1]) + len(args[2]))
        return result

    setattr(module, name, wrapper)
    try:
        yield
    finally:
        setattr(module, name, original)


@contextmanager
def seed_probe(seconds: dict[int, float]) -> Iterator[list[int]]:
    """Time the pairwise-seed derivation of the masked-input stage, per client.

    In that stage each mask-key exchange (X25519) is immediately followed by ``pairwise_seed``
    (HKDF); the share-key exchanges are not, so only the former are counted.
    """
    current = [0]
    last = [0.0]
    original_exchange = KeyAgreementKey.exchange
    original_seed = client_module.pairwise_seed

    def exchange(self: KeyAgreementKey, peer: bytes) -> bytes:
        t0 = time.perf_counter()
        out = original_exchange(self, peer)
        last[0] = time.perf_counter() - t0
        return out

    def pairwise_seed(*args: Any, **kwargs: Any) -> bytes:
        t0 = time.perf_counter()
        out = original_seed(*args, **kwargs)
        spent = last[0] + time.perf_counter() - t0
        seconds[current[0]] = seconds.get(current[0], 0.0) + spent
        return out

    KeyAgreementKey.exchange = exchange  # type: ignore[method-assign]
    client_module.pairwise_seed = pairwise_seed
    try:
        yield current
    finally:
        KeyAgreementKey.exchange = original_exchange  # type: ignore[method-assign]
        client_module.pairwise_seed = original_seed


def prg_throughput(repeats: int = 5) -> float:
    """Bytes per second of ``fill_mask`` into a reused 1 MiB buffer, one core, best of repeats."""
    buf = np.empty(1 << 18, dtype=np.uint32)
    seed = random_seed()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(128):
            fill_mask(seed, buf, i * buf.size)
        best = min(best, time.perf_counter() - t0)
    return 128 * buf.nbytes / best


def numpy_sum(vectors: Sequence[npt.NDArray[np.uint32]], repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        acc = np.zeros_like(vectors[0])
        t0 = time.perf_counter()
        for v in vectors:
            np.add(acc, v, out=acc)
        best = min(best, time.perf_counter() - t0)
    return best


def float_input(row: Row, party: int) -> npt.NDArray[np.float32]:
    rng = np.random.default_rng(1_000_003 * row.n + party)
    return rng.uniform(-1.0, 1.0, row.m).astype(np.float32)


def graph_of(row: Row, config: RoundConfig) -> dict[int, frozenset[int]]:
    return {p: frozenset(config.graph.neighbours(p)) for p in config.parties}


def dropped_set(row: Row) -> frozenset[int]:
    rng = np.random.default_rng(row.n * 7 + row.m)
    count = round(row.dropout * row.n)
    return frozenset(int(p) for p in rng.choice(np.arange(1, row.n + 1), count, replace=False))


# --------------------------------------------------------------------------------------------
# secagg
# --------------------------------------------------------------------------------------------


def run_secagg(row: Row, throughput: float) -> dict[str, Any]:
    n, m = row.n, row.m
    identities = {p: IdentityKey.generate() for p in range(1, n + 1)}
    config = RoundConfig(
        round_id=1,
        roster={p: k.public_key for p, k in identities.items()},
        threshold=row.threshold,
        vector_length=m,
        bits=32,
        degree=None if row.holders is None else row.holders - 1,
    )
    encoding = FixedPointEncoding.for_clients(clip=CLIP, max_clients=n, bits=32)
    dropped = dropped_set(row)
    client_time = dict.fromkeys(identities, 0.0)
    encode_time: dict[int, float] = {}
    stage_time: dict[int, float] = {}
    server = Timer()
    server_receive_masked = Timer()
    inputs: dict[int, npt.NDArray[np.uint32]] = {}
    expected = np.zeros(m, dtype=np.float64)
    clients: dict[int, ClientSession] = {}
    for p in identities:
        x = float_input(row, p)
        if p not in dropped:
            expected += np.clip(x, -CLIP, CLIP)
        t0 = time.perf_counter()
        inputs[p] = encoding.encode(x, uniform_floats(random_seed(), m))
        encode_time[p] = time.perf_counter() - t0
        clients[p] = ClientSession(
            config, p, identities[p], inputs[p], policy=bench_policy(config), ledger=MemoryLedger()
        )
    ss = ServerSession(config)

    def client_call(p: int, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        out = fn()
        client_time[p] += time.perf_counter() - t0
        return out

    for p, c in clients.items():
        msg = client_call(p, c.advertise_keys)
        with server():
            ss.receive(msg)
    with server():
        outbox = ss.close_stage()
    for p, m_ in outbox.items():
        reply = client_call(p, lambda c=clients[p], m_=m_: c.receive(m_))
        with server():
            ss.receive(reply)
    with server():
        outbox = ss.close_stage()

    mask_probe = Probe()
    seed_seconds: dict[int, float] = {}
    mask_time: dict[int, float] = {}
    upload_bytes = 0
    pack_seconds = 0.0
    receive_transient = 0
    with (
        probe(client_module, "apply_masks", mask_probe, count_masks=True),
        seed_probe(seed_seconds) as current,
    ):
        for p, m_ in outbox.items():
            if p in dropped:
                continue
            current[0] = p
            t0 = time.perf_counter()
            reply = clients[p].receive(m_)
            stage_time[p] = time.perf_counter() - t0
            mask_time[p] = mask_probe.seconds[-1]
            client_time[p] += stage_time[p]
            if not upload_bytes:
                t0 = time.perf_counter()
                upload_bytes = pack_bits(reply.masked_vector, config.bits).nbytes
                pack_seconds = time.perf_counter() - t0
                clone = _clone(ss)
                gc.collect()
                tracemalloc.start()
                clone.receive(reply)
                receive_transient = tracemalloc.get_traced_memory()[1] - 4 * m  # new accumulator
                tracemalloc.stop()
                del clone
            with server(), server_receive_masked():
                ss.receive(reply)
            del reply
    with server():
        outbox = ss.close_stage()
    for stage_name in ("consistency", "unmask"):
        for p, m_ in outbox.items():
            reply = client_call(p, lambda c=clients[p], m_=m_: c.receive(m_))
            with server():
                ss.receive(reply)
        if stage_name == "consistency":
            with server():
                outbox = ss.close_stage()

    # Unmask: first a traced run on a clone (memory), then the timed run.
    clone = _clone(ss)
    gc.collect()
    tracemalloc.start()
    clone.close_stage()
    unmask_transient = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    del clone
    gc.collect()
    shamir_probe, regen_probe = Probe(), Probe()
    with (
        probe(server_module, "reconstruct_many", shamir_probe, count_masks=False),
        probe(server_module, "apply_masks", regen_probe, count_masks=True),
    ):
        t0 = time.perf_counter()
        ss.close_stage()
        unmask = time.perf_counter() - t0
    server.total += unmask
    result = ss.result
    assert ss.stage is Stage.COMPLETED
    decoded = encoding.decode_sum(result.total, len(result.survivors))
    error = float(np.max(np.abs(decoded - expected)))
    assert error <= len(result.survivors) * encoding.resolution, error

    survivors = [p for p in identities if p not in dropped]
    sum_seconds = numpy_sum([inputs[p] for p in survivors])
    one_pass = sum_seconds / len(survivors)
    regenerated = sum(regen_probe.masks)
    client_masks = statistics.median(mask_probe.masks)
    vector_bytes = 4 * m
    return {
        "client_mask": statistics.median(mask_probe.seconds),
        "client_masking": statistics.median(seed_seconds[p] + mask_time[p] for p in survivors),
        "client_stage": statistics.median(encode_time[p] + stage_time[p] for p in survivors),
        "client_all": statistics.median(encode_time[p] + client_time[p] for p in survivors),
        "server_unmask": unmask,
        "shamir": sum(shamir_probe.seconds),
        "regen": sum(regen_probe.seconds),
        "server_total": server.total,
        "server_receive_masked": server_receive_masked.total,
        "total": server.total + sum(encode_time.values()) + sum(client_time.values()),
        "upload_bytes": upload_bytes,
        "pack_seconds": pack_seconds,
        "numpy_sum": sum_seconds,
        "server_floor": regenerated * vector_bytes / throughput + one_pass,
        "client_floor": client_masks * vector_bytes / throughput + one_pass,
        "masks_regenerated": regenerated,
        "client_masks": client_masks,
        "accumulator_bytes": vector_bytes,
        "receive_transient": max(receive_transient, 0),
        "unmask_transient": unmask_transient,
        "server_peak": vector_bytes
        + max(vector_bytes + max(receive_transient, 0), unmask_transient),
        "error": error,
        "survivors": len(result.survivors),
        "neighbours": graph_of(row, config),
    }


def _clone(ss: ServerSession) -> ServerSession:
    """A copy of a server session that can be closed independently (benchmark-only access)."""
    clone = copy.copy(ss)
    acc = ss._accumulator
    clone._accumulator = None if acc is None else acc.copy()
    clone._seed_shares = dict(ss._seed_shares)
    clone._key_shares = dict(ss._key_shares)
    clone._senders = {k: set(v) for k, v in ss._senders.items()}
    return clone


# --------------------------------------------------------------------------------------------
# Flower
# --------------------------------------------------------------------------------------------


def run_flower(row: Row, neighbours: dict[int, frozenset[int]]) -> dict[str, Any]:
    from benchmarks._flower import FlowerClient, FlowerServer

    n = row.n
    dropped = dropped_set(row)
    parties = list(range(1, n + 1))
    clients = {p: FlowerClient(p, row.threshold) for p in parties}
    ctime = dict.fromkeys(parties, 0.0)
    stage2: dict[int, float] = {}
    masking: dict[int, float] = {}

    def timed(p: int, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        out = fn()
        ctime[p] += time.perf_counter() - t0
        return out

    keys = {p: timed(p, clients[p].setup) for p in parties}
    holders = {p: sorted(neighbours[p] | {p}) for p in parties}
    inbox: dict[int, dict[int, bytes]] = {p: {} for p in parties}
    for p in parties:
        sent = timed(p, lambda p=p: clients[p].share_keys({q: keys[q] for q in holders[p]}))
        for dst, ct in sent.items():
            inbox[dst][p] = ct
    srv = FlowerServer(neighbours, keys)
    server_receive = 0.0
    upload = 0
    expected = np.zeros(row.m, dtype=np.float64)
    for p in parties:
        if p in dropped:
            continue
        x = float_input(row, p)
        expected += np.clip(x, -CLIP, CLIP)
        t0 = time.perf_counter()
        blobs = clients[p].masked_vector(inbox[p], x)
        stage2[p] = time.perf_counter() - t0
        masking[p] = clients[p].mask_seconds
        ctime[p] += stage2[p]
        upload = upload or sum(len(b) for b in blobs)
        t0 = time.perf_counter()
        srv.add_masked(blobs)
        server_receive += time.perf_counter() - t0
        del blobs
    t0 = time.perf_counter()
    srv.close_masked()
    server_receive += time.perf_counter() - t0
    active = [p for p in parties if p not in dropped]
    active_set = set(active)
    collected: dict[int, list[bytes]] = {p: [] for p in parties}
    for p in active:
        nb = holders[p]
        nids, shares = timed(
            p,
            lambda p=p, nb=nb: clients[p].unmask(
                [q for q in nb if q in active_set], [q for q in nb if q not in active_set]
            ),
        )
        for owner, share in zip(nids, shares, strict=True):
            collected[owner].append(share)
    t0 = time.perf_counter()
    srv.reconstruct(collected)
    t1 = time.perf_counter()
    reduced = srv.remove_masks(active_set)
    t2 = time.perf_counter()
    decoded = srv.decode(reduced, len(active)) * len(active)  # Flower returns the mean
    error = float(np.max(np.abs(decoded - expected)))
    assert error < 1e-3 * len(active), error
    # Memory of the mask phase (the numpy part), traced in a second run.
    gc.collect()
    tracemalloc.start()
    srv.remove_masks(active_set)
    mask_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {
        "client_masking": statistics.median(masking[p] for p in active),
        "client_stage": statistics.median(stage2[p] for p in active),
        "client_all": statistics.median(ctime[p] for p in active),
        "server_unmask": t2 - t0,
        "shamir": t1 - t0,
        "server_total": server_receive + (t2 - t0),
        "total": server_receive + (t2 - t0) + sum(ctime.values()),
        "upload_bytes": upload,
        "server_peak": 8 * row.m + mask_peak,  # summed vector + the traced mask phase
        "error": error,
    }


def shamir_full_graph(gbps: float, *, flower: bool) -> dict[str, float]:
    """Reconstruction at n = 1,000, full graph, 10 % dropout (t = 501, 900 survivors' shares).

    900 self-mask seeds and 100 mask keys are reconstructed; the unmask step must also regenerate
    900 + 100 x 900 masks, whose expansion floor at m = 100,000 is given for scale. Flower's
    ``combine_shares`` is timed on one secret with 150 shares and extrapolated (O(shares^2)).
    """
    from secagg.crypto import reconstruct_many, split_many

    n, t, survivors = 1000, 501, 900
    holders = list(range(1, n + 1))
    alive = holders[:survivors]
    secrets = [random_seed() for _ in range(n)]
    shares = split_many(secrets, threshold=t, xs=holders)
    share_sets = [{x: s[x] for x in alive} for s in shares]
    reconstruct_many(share_sets[:2], threshold=t)  # warm the Lagrange cache like a real round
    t0 = time.perf_counter()
    assert reconstruct_many(share_sets, threshold=t) == secrets
    ours = time.perf_counter() - t0
    masks = survivors + (n - survivors) * survivors
    out = {"secagg": ours, "masks": masks, "regen_floor": masks * 4 * 100_000 / gbps}
    if flower:
        from flwr.common.secure_aggregation.crypto.shamir import combine_shares, create_shares

        k = 150
        flower_shares = create_shares(random_seed(), k // 2 + 1, k)
        t0 = time.perf_counter()
        combine_shares(flower_shares)
        one = time.perf_counter() - t0
        out["flower_one_150"] = one
        out["flower_estimate"] = one * (survivors / k) ** 2 * n
    return out


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _ms(s: float) -> str:
    return f"{s * 1e3:,.1f} ms" if s < 10 else f"{s:,.1f} s"


def _mb(b: float) -> str:
    return f"{b / 1e6:,.1f} MB"


def _x(a: float, b: float) -> str:
    return f"{a / b:,.0f}x" if a / b >= 10 else f"{a / b:,.1f}x"


def render(
    results: list[tuple[Row, dict[str, Any], dict[str, Any] | None]],
    gbps: float,
    shamir: dict[str, float] | None = None,
) -> str:
    lines = [
        "## SecAgg / SecAgg+ masking: secagg vs Flower 1.42 and the hardware floor",
        "",
        *machine_lines(),
        f"- Mask threads: {get_num_threads()}; CSPRNG floor (`fill_mask`, AES-256-CTR, one core, "
        f"1 MiB reused buffer): **{gbps / 1e9:.2f} GB/s**",
        "- Command: `python -m benchmarks` (this section alone: "
        "`python -m benchmarks.bench_masking`)",
        "",
        "Rows: n clients, m parameters, dropout (clients that shared keys then sent no masked "
        "input), k share holders per client (Flower's count, self included) / threshold t. "
        "Both implementations get identical float inputs, graph and dropout set in the same run. "
        "Client times are medians over the surviving clients.",
        "",
        "### Client and server times",
        "",
        "| row | impl | client mask | client masking | client masked-input stage | "
        "client all stages | "
        "server unmask (Shamir) | server all stages | total | upload / client | "
        "server peak mem |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row, ours, flower in results:
        lines.append(
            f"| {row.label} | secagg | {_ms(ours['client_mask'])} | "
            f"{_ms(ours['client_masking'])} | {_ms(ours['client_stage'])} | "
            f"{_ms(ours['client_all'])} | {_ms(ours['server_unmask'])} ({_ms(ours['shamir'])}) | "
            f"{_ms(ours['server_total'])} | {_ms(ours['total'])} | {_mb(ours['upload_bytes'])} | "
            f"{_mb(ours['server_peak'])} |"
        )
        if flower is not None:
            lines.append(
                f"| | Flower | -- | {_ms(flower['client_masking'])} | "
                f"{_ms(flower['client_stage'])} | {_ms(flower['client_all'])} "
                f"| {_ms(flower['server_unmask'])} ({_ms(flower['shamir'])}) | "
                f"{_ms(flower['server_total'])} | {_ms(flower['total'])} | "
                f"{_mb(flower['upload_bytes'])} | {_mb(flower['server_peak'])} |"
            )
        else:
            lines.append(f"| | Flower | not run ({row.note}) | | | | | | | | |")
    lines += [
        "",
        "### Ratios (same run)",
        "",
        "| row | unmask speed-up vs Flower | client masking speed-up | masked-input stage "
        "speed-up | all-stages client speed-up | upload ratio | unmask / server floor | "
        "client mask / client floor | client masking / client floor | floor inputs |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row, ours, flower in results:
        fl = (
            (
                _x(flower["server_unmask"], ours["server_unmask"]),
                _x(flower["client_masking"], ours["client_masking"]),
                _x(flower["client_stage"], ours["client_stage"]),
                _x(flower["client_all"], ours["client_all"]),
                _x(flower["upload_bytes"], ours["upload_bytes"]),
            )
            if flower
            else ("--",) * 5
        )
        lines.append(
            f"| {row.label} | {' | '.join(fl)} | "
            f"{ours['server_unmask'] / ours['server_floor']:.2f} "
            f"({_ms(ours['server_floor'])}) | "
            f"{ours['client_mask'] / ours['client_floor']:.2f} ({_ms(ours['client_floor'])}) | "
            f"{ours['client_masking'] / ours['client_floor']:.2f} | "
            f"{ours['masks_regenerated']} masks regenerated, {ours['client_masks']:.0f} per "
            f"client; numpy sum of n inputs {_ms(ours['numpy_sum'])} |"
        )
    lines += [
        "",
        "### Server memory (secagg)",
        "",
        "| row | one vector (4m) | accumulator | in-flight masked input | receive transient | "
        "unmask transient | peak | peak / vector |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row, ours, _ in results:
        vb = ours["accumulator_bytes"]
        lines.append(
            f"| {row.label} | {_mb(vb)} | {_mb(vb)} | {_mb(vb)} | "
            f"{ours['receive_transient'] / 1e3:,.0f} kB | "
            f"{ours['unmask_transient'] / 1e3:,.0f} kB | {_mb(ours['server_peak'])} | "
            f"{ours['server_peak'] / vb:.2f} |"
        )
    if shamir is not None:
        lines += [
            "",
            "### Shamir reconstruction at n = 1,000, full graph, 10 % dropout",
            "",
            f"secagg reconstructs the 1,000 secrets (t = 501, 900 shares each) in "
            f"**{_ms(shamir['secagg'])}**; the same unmask must regenerate "
            f"{shamir['masks']:,.0f} masks, whose expansion alone takes "
            f"{_ms(shamir['regen_floor'])} at m = 100,000 at the measured CSPRNG throughput, so "
            f"reconstruction is {shamir['secagg'] / (shamir['secagg'] + shamir['regen_floor']):.1%}"
            " of the unmask floor.",
        ]
        if "flower_estimate" in shamir:
            lines[-1] += (
                f" Flower's `combine_shares` took {_ms(shamir['flower_one_150'])} for one secret "
                f"from 150 shares; extrapolated (quadratic in shares) to this case: "
                f"~{shamir['flower_estimate'] / 3600:,.1f} h (not run)."
            )
    lines += [
        "",
        "Columns. *client mask*: secagg's `add_masks` call alone (self mask + one pairwise mask "
        "per neighbour, expanded chunk by chunk and combined in cache). *client masking*: the "
        "masking computation as a whole -- pairwise seed derivation (secagg: X25519 + HKDF; "
        "Flower: ECDH P-384 + HKDF) plus mask expansion and combination (Flower: Mersenne-"
        "Twister `pseudo_rand_gen` and int64 additions) and the final reduction. "
        "*client masked-input stage*: secagg = encoding (stochastic rounding) + the whole "
        "masked-input stage "
        "(AEAD-decrypting neighbours' shares, X25519 + HKDF per neighbour, masking, BLAKE2b + "
        "Ed25519 signature); Flower = its stage 2 (Fernet decryption, quantisation, ECDH P-384 + "
        "HKDF per neighbour, Mersenne-Twister masks). *client all stages*: every client "
        "computation of the round. *server unmask*: closing the unmask stage (in brackets: Shamir "
        "reconstruction alone). *server all stages*: every server call, including signature "
        "checks and accumulation of masked inputs. *total*: all client and server work of the "
        "round in this one process. *upload*: the masked vector on the wire (secagg: "
        "`pack_bits` at b = 32; Flower: `ndarray_to_bytes` of int64). *server peak mem*: secagg = "
        "accumulator + max(in-flight input + receive transient, unmask transient), transients by "
        "tracemalloc; Flower = its int64 sum + the traced peak of its mask-removal phase. "
        "*floors*: see the module docstring of `benchmarks/bench_masking.py`.",
    ]
    return "\n".join(lines) + "\n"


def run(rows: Sequence[Row], *, flower: bool = True, verbose: bool = True) -> str:
    # Warm-up: compile (or load cached) kernels before anything is timed.
    warm = np.zeros(1 << 16, dtype=np.uint32)
    add_masks(warm, [random_seed()], [random_seed()])
    stochastic_round(np.zeros(4), np.zeros(4), 1.0, 1.0, 0xFFFFFFFF)
    pack_bits(np.zeros(4, dtype=np.uint32), 7)
    gbps = prg_throughput()
    if verbose:
        print(f"fill_mask: {gbps / 1e9:.2f} GB/s on one core", file=sys.stderr)
    results: list[tuple[Row, dict[str, Any], dict[str, Any] | None]] = []
    for row in rows:
        t0 = time.perf_counter()
        ours = run_secagg(row, gbps)
        if verbose:
            print(f"{row.label}: secagg done in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        theirs = None
        if flower and row.flower:
            t0 = time.perf_counter()
            theirs = run_flower(row, ours.pop("neighbours"))
            if verbose:
                print(
                    f"{row.label}: Flower done in {time.perf_counter() - t0:.1f} s",
                    file=sys.stderr,
                )
        results.append((row, ours, theirs))
        gc.collect()
    shamir = shamir_full_graph(gbps, flower=flower)
    gbps_end = prg_throughput()
    return render(results, max(gbps, gbps_end), shamir)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="secagg masking vs Flower SecAgg+")
    parser.add_argument("--quick", action="store_true", help="two small rows only")
    parser.add_argument("--no-flower", action="store_true", help="skip Flower")
    args = parser.parse_args(argv)
    rows = QUICK if args.quick else GRID
    markdown = run(rows, flower=not args.no_flower)
    path = write_section("masking", markdown)
    print(markdown)
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
