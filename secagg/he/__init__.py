"""Mode ``ckks``: homomorphic-encryption secure aggregation with TenSEAL (CKKS).

The only part of secagg that imports TenSEAL; ``import secagg`` does not import this package.

Flow (bytes in, bytes out, no I/O):

1. The key holder runs ``KeyHolderContext.generate(CkksParameters())`` (a fresh key per round by
   default) and sends ``public_context_bytes()`` to the aggregator and the sites.
2. Everyone loads it with ``PublicContext.from_bytes(data, params)``, which refuses a context that
   carries a secret key.
3. Each site sends ``encrypt_update(public_ctx, update, weight, identity=..., round_id=...,
   site_id=...)``: a list of chunk bytes, each signed with the site's roster identity.
4. The aggregator keeps ``EncryptedSum(public_ctx, layout, round_id=..., roster=...)`` and calls
   ``add(site_id, chunks)`` as updates arrive (signatures checked); dropouts are simply never
   added. It sends ``result_bytes()`` and every added site's signed chunks to the key holder.
5. The key holder calls ``decrypt_sum(blob, contributions, layout=..., round_id=..., roster=...,
   min_sites=...)``: it verifies the signatures, recomputes the sum, checks the aggregator's sum
   is exactly that, and releases it with flooding noise (``DecryptedSum.values``).

See docs/ckks.md for the parameters, their security, the error bounds and the threat model.
"""

from secagg.he.aggregate import EncryptedSum, encrypt_update, iter_encrypt_update
from secagg.he.flooding import FloodingPolicy
from secagg.he.keys import DecryptedSum, KeyHolderContext, PublicContext
from secagg.he.packing import Layout
from secagg.he.params import HE_STANDARD_128_CLASSICAL, CkksParameters
from secagg.he.signed import MissingSignersError

__all__ = [
    "HE_STANDARD_128_CLASSICAL",
    "CkksParameters",
    "DecryptedSum",
    "EncryptedSum",
    "FloodingPolicy",
    "KeyHolderContext",
    "Layout",
    "MissingSignersError",
    "PublicContext",
    "encrypt_update",
    "iter_encrypt_update",
]
