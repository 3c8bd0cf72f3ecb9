"""The uplink: buffer -> city platform (DESIGN.md section 5, docs/uplink-api.md).

- :mod:`agent.uplink.base` — the transport interface and the outcomes of an answer;
- :mod:`agent.uplink.pump` — take, cut, send, then acknowledge, split, set aside or retry;
- :mod:`agent.uplink.inventory` — the inventory sender;
- :mod:`agent.uplink.commands` — command verification, run-once, results;
- :mod:`agent.uplink.link` — link state and retry pacing;
- :mod:`agent.uplink.client` — one uplink: those four over one transport;
- :mod:`agent.uplink.http` — the HTTP transport (signing, clock skew, statuses);
- :mod:`agent.uplink.wire` — the wire contract both ends import.

For every transport "acknowledged" means the platform answered that it *stored* the batch,
never merely that it was delivered. The transports are imported from their modules so that
importing this package stays cheap and free of network libraries.
"""

from __future__ import annotations

from agent.uplink.base import REFUSAL_REASONS, CommandExecutor, Uplink

__all__ = ["REFUSAL_REASONS", "CommandExecutor", "Uplink"]
