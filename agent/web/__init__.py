"""The technician's diagnostic page (DESIGN.md section 8): login, live status, test reads,
commands, ``/api`` JSON and ``/metrics``, served by aiohttp inside the agent's process.

:mod:`agent.web.server` holds the application (:class:`~agent.web.server.WebServer`,
:func:`~agent.web.server.start_web`, which :mod:`agent.app` calls); it is imported only when the
page runs, so ``hash-password`` and ``check-config`` never load aiohttp. The page reads the agent
through :class:`agent.view.AgentView` only.
"""

from __future__ import annotations

from agent.web.auth import hash_password, verify_password

__all__ = ["hash_password", "verify_password"]
