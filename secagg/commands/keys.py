"""``secagg keys``: create and inspect Ed25519 identity keys for the roster."""

from __future__ import annotations

import argparse
import base64
import pathlib
from typing import Any


def register(sub: Any) -> None:
    keys = sub.add_parser("keys", help="create and inspect identity keys (Ed25519)")
    ksub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    gen = ksub.add_parser(
        "generate", help="create a private key file (mode 0600) and print its public key"
    )
    gen.add_argument("--out", required=True, type=pathlib.Path, help="private key file to create")
    gen.add_argument("--party", type=int, help="party id: also print a [[roster]] entry")
    gen.set_defaults(handler=generate)
    show = ksub.add_parser("public", help="print the public key of a private key file")
    show.add_argument("key", type=pathlib.Path)
    show.add_argument("--party", type=int, help="party id: print a [[roster]] entry")
    show.set_defaults(handler=public)
    fp = ksub.add_parser(
        "roster-fingerprint",
        help="print the fingerprint of the [[roster]] entries of a TOML file (for a site's "
        "[policy] roster_fingerprint)",
    )
    fp.add_argument("config", type=pathlib.Path, help="a TOML file with [[roster]] entries")
    fp.set_defaults(handler=roster_fingerprint)


def _print_public(key_path: pathlib.Path, party: int | None) -> None:
    from secagg.client import load_identity

    pub = load_identity(key_path).public_key
    raw = pub.to_bytes()
    print(f"public key (hex):    {raw.hex()}")
    print(f"public key (base64): {base64.b64encode(raw).decode()}")
    print(f"fingerprint:         {pub.fingerprint()}")
    if party is not None:
        print("\n# roster entry for the aggregator's configuration:")
        print(f'[[roster]]\nparty = {party}\npublic_key = "{raw.hex()}"')


def generate(args: argparse.Namespace) -> int:
    from secagg.client import save_identity
    from secagg.commands.errors import EXIT_FILE, CommandError
    from secagg.crypto import IdentityKey

    try:
        save_identity(IdentityKey.generate(), args.out)
    except FileExistsError:
        raise CommandError(
            f"{args.out} exists; refusing to overwrite a key (choose another --out)", EXIT_FILE
        ) from None
    print(f"wrote private key {args.out} (mode 0600; keep it secret)")
    _print_public(args.out, args.party)
    return 0


def public(args: argparse.Namespace) -> int:
    _print_public(args.key, args.party)
    return 0


def roster_fingerprint(args: argparse.Namespace) -> int:
    import tomllib

    from secagg.protocol import roster_fingerprint as fingerprint
    from secagg.site import read_roster

    doc = tomllib.loads(args.config.read_text())
    roster = read_roster(doc.get("roster"), f"{args.config} [[roster]]")
    print(fingerprint(roster).hex())
    return 0
