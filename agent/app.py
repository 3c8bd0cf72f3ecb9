"""The composition root: builds the agent's services and starts and stops them in order.

``edge-agent run`` and the demo build an :class:`App`. Start order: the buffer, the runtime
(devices and supervision), the uplink, the control socket, the diagnostic page; stop order the
reverse, so that nothing accepted is lost. The runtime knows none of the services it is given:
the page reads the agent through :class:`agent.view.AgentView` only, and is imported only when
the config turns it on.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.control import ControlServer
from agent.runtime import Runtime

if TYPE_CHECKING:
    from agent.config.models import AgentConfig
    from agent.web.server import WebServer

__all__ = ["App", "ControlService", "PageService"]


class ControlService:
    """The local control socket (``edge-agent command``, ``scan``/``read`` through the agent)."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self.server: ControlServer | None = None

    async def start(self) -> None:
        runtime = self._runtime
        server = ControlServer(
            Runtime.control_path(runtime.config), runtime.execute_command, runtime.run_tool
        )
        try:
            await server.start()
        except OSError as exc:
            # On-site commands are a convenience; the agent's main job goes on without them.
            runtime.log.error("control.unavailable", path=str(server.path), error=str(exc))
            return
        self.server = server

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()
            self.server = None


class PageService:
    """The diagnostic page, ``/api`` and ``/metrics``; aiohttp is imported only when it runs."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self.server: WebServer | None = None

    async def start(self) -> None:
        web = self._runtime.config.web
        if not web.enabled:
            self._runtime.log.info("web.disabled", task="web", hint="web.enabled is false")
            return
        from agent.web.server import start_web  # noqa: PLC0415

        self.server = await start_web(self._runtime)

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()
            self.server = None


class App:
    """One agent: the runtime and what it serves."""

    def __init__(
        self, config: AgentConfig, *, config_path: Path | None = None, **runtime: Any
    ) -> None:
        self.runtime = Runtime(config, config_path=config_path, **runtime)
        self.control = ControlService(self.runtime)
        self.page = PageService(self.runtime)
        self.runtime.services += [self.control, self.page]

    @property
    def web(self) -> WebServer | None:
        """The page's server while it is served."""
        return self.page.server

    async def start(self) -> None:
        await self.runtime.start()

    async def run(self, *, install_signals: bool = True, started: bool = False) -> int:
        return await self.runtime.run(install_signals=install_signals, started=started)
