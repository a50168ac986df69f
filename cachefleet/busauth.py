"""The embedded broker's plugins: who may connect (one credential per role, from the
cluster's ``bus.secrets``) and what each role may publish (``security.BUS_PUBLISH``).

Loaded by the broker process only (amqtt imports them by dotted path)."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from pathlib import Path

from amqtt.contexts import Action, BaseContext
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session

from cachefleet.buscreds import bus_publish_allowed, ensure_bus_secrets


class RoleAuthPlugin(BaseAuthPlugin):  # type: ignore[misc]
    """A client connects only with one of the cluster's role credentials."""

    @dataclass
    class Config:
        root: str = ""  # the cluster's directory

    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)
        self.credentials = ensure_bus_secrets(Path(self.config.root))

    async def authenticate(self, *, session: Session) -> bool:
        user, password = session.username, session.password
        if user is None or password is None or user not in self.credentials:
            self.context.logger.warning("bus client refused: no or unknown credentials")
            return False
        return hmac.compare_digest(self.credentials[user].encode(), password.encode())


class RoleTopicPlugin(BaseTopicPlugin):  # type: ignore[misc]
    """Publishing is allowed per role; subscribing and receiving to every authenticated
    role (the bus carries control state, never data or secrets)."""

    @dataclass
    class Config:
        cluster: str = ""
        agents_publish_layout: bool = False  # memcached: agents bump the discovery version

    async def topic_filtering(
        self,
        *,
        session: Session | None = None,
        topic: str | None = None,
        action: Action | None = None,
    ) -> bool:
        if action != Action.PUBLISH:
            return True
        user = session.username if session is not None else None
        allowed = topic is not None and bus_publish_allowed(
            user,
            self.config.cluster,
            topic,
            agents_publish_layout=self.config.agents_publish_layout,
        )
        if not allowed:
            self.context.logger.warning(f"bus publish refused: {user} on {topic}")
        return allowed


class PasswordAuthPlugin(BaseAuthPlugin):  # type: ignore[misc]
    """A standalone broker (``python -m cachefleet.broker`` without ``--cluster``, what a
    cluster with ``bus.url`` meets as its external broker) admitting one user."""

    @dataclass
    class Config:
        username: str = ""
        password_file: str = ""

    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)
        self.password = Path(self.config.password_file).read_text().rstrip("\r\n")

    async def authenticate(self, *, session: Session) -> bool:
        user, password = session.username, session.password
        ok = (
            user == self.config.username
            and password is not None
            and hmac.compare_digest(self.password.encode(), password.encode())
        )
        if not ok:
            self.context.logger.warning("bus client refused: wrong user name or password")
        return ok
