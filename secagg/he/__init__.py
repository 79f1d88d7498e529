"""Mode ``ckks``: homomorphic-encryption secure aggregation with TenSEAL (CKKS).

The only part of secagg that imports TenSEAL; ``import secagg`` does not import this package.

Flow (bytes in, bytes out, no I/O):

1. The key holder runs ``KeyHolderContext.generate(CkksParameters())`` and sends
   ``public_context_bytes()`` to the aggregator and the sites.
2. Everyone loads it with ``PublicContext.from_bytes(data, params)``, which refuses a context that
   carries a secret key.
3. Each site sends ``encrypt_update(public_ctx, update, weight)`` (a list of chunk bytes).
4. The aggregator keeps ``EncryptedSum(public_ctx, layout)`` and calls ``add(site_id, chunks)`` as
   updates arrive; dropouts are simply never added. It sends ``result_bytes()`` to the key holder.
5. The key holder calls ``decrypt_sum(data, layout)`` and gets the (weighted) sum.

See docs/ckks.md for the parameters, their security, the precision bound and the threat model.
"""

from secagg.he.aggregate import EncryptedSum, encrypt_update, iter_encrypt_update
from secagg.he.keys import KeyHolderContext, PublicContext
from secagg.he.packing import Layout
from secagg.he.params import HE_STANDARD_128_CLASSICAL, CkksParameters

__all__ = [
    "HE_STANDARD_128_CLASSICAL",
    "CkksParameters",
    "EncryptedSum",
    "KeyHolderContext",
    "Layout",
    "PublicContext",
    "encrypt_update",
    "iter_encrypt_update",
]
