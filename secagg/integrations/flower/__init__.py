"""secagg as the secure-aggregation backend of Flower (1.42): a client mod and a server workflow.

Drop-in for Flower's ``secaggplus_mod`` / ``SecAggPlusWorkflow``::

    from secagg.integrations.flower import SecAggWorkflow, secagg_mod

    client_app = ClientApp(client_fn=client_fn, mods=[secagg_mod])
    ...
    DefaultWorkflow(fit_workflow=SecAggWorkflow(num_shares=..., reconstruction_threshold=...))(
        grid, legacy_context
    )

Needs the ``flower`` extra (``pip install secagg[flower]``). See docs/flower.md.
"""

from __future__ import annotations

try:
    import flwr  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "secagg.integrations.flower needs Flower: pip install 'secagg[flower]'"
    ) from exc

from secagg.integrations.flower._common import RECORD_KEY, DistributedDP, FlowerStage
from secagg.integrations.flower.client_mod import (
    IdentityProvider,
    context_identity,
    make_secagg_mod,
    secagg_mod,
)
from secagg.integrations.flower.workflow import PRIVACY_RECORD, RoundSummary, SecAggWorkflow

__all__ = [
    "PRIVACY_RECORD",
    "RECORD_KEY",
    "DistributedDP",
    "FlowerStage",
    "IdentityProvider",
    "RoundSummary",
    "SecAggWorkflow",
    "context_identity",
    "make_secagg_mod",
    "secagg_mod",
]
