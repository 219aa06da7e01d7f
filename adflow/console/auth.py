"""Admin tokens: who may change things from the console. Reading needs none.

Tokens are configured, never committed: a file (`adflow ui --tokens-file`, or ADFLOW_CONSOLE_TOKENS_FILE) or
the ADFLOW_CONSOLE_TOKENS variable, each entry `user:token` (file: one per line, `#` comments; variable:
comma-separated). The user name is what the audit log, the registry history and the A/B events record.
A request carries its token as `Authorization: Bearer <token>` (API clients) or in the cookie the sign-in page
sets (the browser; HttpOnly, SameSite=Strict, so another site's page cannot send it).
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass
from pathlib import Path

COOKIE = "adflow_token"
MIN_TOKEN_CHARS = 16


class TokenConfigError(ValueError):
    pass


@dataclass(frozen=True)
class Tokens:
    users: dict[str, str]  # token -> user

    @classmethod
    def parse(cls, entries: list[str], source: str) -> Tokens:
        users: dict[str, str] = {}
        for n, raw in enumerate(entries, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            user, sep, token = line.partition(":")
            user, token = user.strip(), token.strip()
            if not sep or not user or not token:
                raise TokenConfigError(f"{source} entry {n}: expected user:token")
            if len(token) < MIN_TOKEN_CHARS:
                raise TokenConfigError(f"{source} entry {n} ({user}): token shorter than {MIN_TOKEN_CHARS}")
            if token in users:
                raise TokenConfigError(f"{source} entry {n} ({user}): token already used by {users[token]}")
            users[token] = user
        return cls(users)

    @classmethod
    def load(cls, path: str | Path | None = None) -> Tokens:
        """From `path`, else ADFLOW_CONSOLE_TOKENS_FILE, else ADFLOW_CONSOLE_TOKENS; none: read-only console."""
        path = path or os.environ.get("ADFLOW_CONSOLE_TOKENS_FILE")
        if path:
            p = Path(path)
            if not p.is_file():
                raise TokenConfigError(f"tokens file {p} does not exist")
            return cls.parse(p.read_text().splitlines(), str(p))
        env = os.environ.get("ADFLOW_CONSOLE_TOKENS", "")
        return cls.parse(env.split(","), "ADFLOW_CONSOLE_TOKENS") if env.strip() else cls({})

    def user(self, token: str | None) -> str | None:
        """The user a token belongs to, or None. Compared in constant time."""
        if not token:
            return None
        found = None
        for known, user in self.users.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                found = user
        return found

    @property
    def configured(self) -> bool:
        return bool(self.users)
