"""``GET /.well-known/jwks.json``."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView

from auth_app.extensions import token_issuer
from auth_app.resources.jwks.schemas import JwksSchema
from common.web import ServiceBlueprint

blp = ServiceBlueprint("jwks", __name__, url_prefix="/.well-known", description="Signing keys")

# Verifiers may keep the set five minutes; one that meets an unknown kid after a
# rotation fetches it again, so caching never delays a rotation for long.
CACHE_CONTROL = "public, max-age=300"


@blp.route("/jwks.json")
class Jwks(MethodView):
    @blp.response(200, JwksSchema)
    def get(self) -> Any:
        """Every key whose tokens may still be alive; ``kid`` is the RFC 7638 thumbprint."""
        return token_issuer().keys.jwks(), 200, {"Cache-Control": CACHE_CONTROL}
