"""Connection tokens: JSON Web Tokens (RFC 7519) verified with PyJWT.

HS256 with a shared secret, or RS256 with the application's public key. ``exp`` is
enforced (``nbf`` too, when present), with a small leeway for clock skew. Claims sockway
reads:

* ``sub`` -- the user id (presence, application events);
* ``channels`` -- channel patterns the client may subscribe to (``news``, ``chat:*``);
* ``publish`` -- channel patterns the client may publish to;
* ``info`` -- an object shown in presence.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

from sockway.config import AuthConfig

__all__ = ["AuthError", "TokenVerifier", "claim_allows"]


class AuthError(Exception):
    """The token is missing, malformed, expired or signed with the wrong key."""


class TokenVerifier:
    def __init__(self, config: AuthConfig) -> None:
        self.config = config
        self.keys: list[tuple[str, object]] = []
        if config.jwt_secret:
            self.keys.append(("HS256", config.jwt_secret))
        if config.jwt_public_key:
            try:
                pem = Path(config.jwt_public_key).read_bytes()
            except OSError as exc:
                raise ValueError(f"auth.jwt_public_key: cannot read {config.jwt_public_key}: {exc}") from None
            self.keys.append(("RS256", pem))

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def verify(self, token: object) -> dict:
        """The token's claims, or AuthError saying what is wrong."""
        if not self.keys:
            raise AuthError("this server accepts no tokens (no auth.jwt_secret or auth.jwt_public_key)")
        if not isinstance(token, str) or not token:
            raise AuthError("token missing")
        import jwt  # imported on first use: PyJWT pulls in cryptography, slow to load

        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AuthError(f"malformed token: {exc}") from None
        algorithm = header.get("alg")
        for alg, key in self.keys:
            if alg != algorithm:
                continue
            try:
                return jwt.decode(
                    token,
                    key,  # type: ignore[arg-type]
                    algorithms=[alg],
                    audience=self.config.jwt_audience,
                    issuer=self.config.jwt_issuer,
                    leeway=self.config.leeway,
                    options={"require": ["exp"], "verify_aud": self.config.jwt_audience is not None},
                )
            except jwt.ExpiredSignatureError:
                raise AuthError("token expired") from None
            except jwt.PyJWTError as exc:
                raise AuthError(f"invalid token: {exc}") from None
        accepted = ", ".join(alg for alg, _ in self.keys)
        raise AuthError(f"token algorithm {algorithm!r} not accepted (accepted: {accepted})")


def claim_allows(claims: dict | None, claim: str, channel: str) -> bool:
    """Whether the ``claim`` list (patterns) of verified ``claims`` covers ``channel``."""
    if not claims:
        return False
    patterns = claims.get(claim)
    if isinstance(patterns, str):
        patterns = [patterns]
    if not isinstance(patterns, list):
        return False
    return any(isinstance(p, str) and fnmatch.fnmatchcase(channel, p) for p in patterns)
