"""Run the example in Flower's simulation engine (ClientApps on threads): one command.

python -m clients.flower_app [--rounds 5] [--clients 5] [--drop-stage masked_input]
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable

from clients.flower_app.client_app import client_fn
from clients.flower_app.server_app import HISTORY, make_server_app
from secagg.crypto import IdentityKey
from secagg.integrations.flower import RECORD_KEY, make_secagg_mod
from secagg.integrations.flower.simulation import run_simulation_in_process
from secagg.protocol import SitePolicy


def drop_once(stage: str, partition: int) -> Any:
    """A mod that makes one hospital vanish at ``stage`` of round 2 (to show dropout recovery)."""

    def mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
        record = msg.content.config_records.get(RECORD_KEY)
        if (
            record is not None
            and record["stage"] == stage
            and msg.metadata.group_id == "2"
            and int(ctxt.node_config["partition-id"]) == partition
        ):
            raise RuntimeError(f"hospital {partition} went offline at {stage}")
        return call_next(msg, ctxt)

    return mod


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--clients", type=int, default=5)
    ap.add_argument("--drop-stage", default="masked_input", help="'' for no dropout")
    args = ap.parse_args(argv)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    mods = [drop_once(args.drop_stage, 1)] if args.drop_stage else []
    # The consortium registers each hospital's identity key before training and every hospital
    # pins the list (here: generated for this simulation; in a deployment each site keeps its own
    # key file and names its site TOML in the node config key "secagg-site", see docs/flower.md).
    keys = [IdentityKey.generate() for _ in range(args.clients)]
    seeds = [k.private_bytes() for k in keys]
    policy = SitePolicy.trusting_keys([k.public_key for k in keys])

    def identity(context: Context) -> IdentityKey:
        return IdentityKey.from_private_bytes(seeds[int(context.node_config["partition-id"])])

    site_mod = make_secagg_mod(policy=policy, identity=identity)
    client_app = ClientApp(client_fn=client_fn, mods=[*mods, site_mod])
    server_app, workflow = make_server_app(args.clients, args.rounds)
    run_simulation_in_process(server_app, client_app, args.clients)
    print(f"{'round':>5}  {'survivors':>9}  {'dropouts':>8}  {'test loss':>9}  {'accuracy':>8}")
    by_round = {r: (loss, acc) for r, loss, acc in HISTORY}
    for s in workflow.reports:
        loss, acc = by_round.get(s.round, (float("nan"), float("nan")))
        print(
            f"{s.round:>5}  {len(s.survivors):>9}  {len(s.dropouts):>8}  {loss:>9.4f}  {acc:>8.3f}"
        )
    print("privacy report of the last round:", workflow.reports[-1].report.to_json())


if __name__ == "__main__":
    main()
