"""The uplink: buffer -> city platform (DESIGN.md section 5, docs/uplink-api.md).

One interface, transports behind it: :class:`agent.uplink.http.HttpUplinkClient` today, MQTT
later. For every transport "acknowledged" means the platform answered that it *stored* the
batch (HTTP 200 after its commit), never merely that it was delivered.

The transports are imported from their modules (``agent.uplink.http``) so that importing this
package stays cheap and free of network libraries.
"""

from __future__ import annotations

from agent.uplink.base import REFUSAL_REASONS, CommandExecutor, Uplink

__all__ = ["REFUSAL_REASONS", "CommandExecutor", "Uplink"]
