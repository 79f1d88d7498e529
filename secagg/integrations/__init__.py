"""Adapters that embed secagg in other federated-learning stacks.

* :mod:`secagg.integrations.flower` -- a client mod and a server workflow for Flower 1.42 (needs the
  ``flower`` extra; importing :mod:`secagg` or this package never imports ``flwr``).

Any other stack can drive :class:`secagg.protocol.ClientSession` and
:class:`secagg.protocol.ServerSession` itself and move the messages as bytes with
:mod:`secagg.wire`; see ``docs/embedding.md``.
"""

from __future__ import annotations

__all__: list[str] = []
