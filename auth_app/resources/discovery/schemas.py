"""The discovery document."""

from __future__ import annotations

from marshmallow import Schema, fields


class DiscoverySchema(Schema):
    """Authorization server metadata (RFC 8414) for resource servers, OpenID Discovery names."""

    issuer = fields.String(
        required=True,
        metadata={"description": "JWT_ISSUER: the iss claim of every access token, exactly"},
    )
    jwks_uri = fields.String(required=True, metadata={"description": "The signing keys (RFC 7517)"})
    token_endpoint = fields.String(
        required=True,
        metadata={"description": "Where tokens are issued: the login (a JSON body, not a form)"},
    )
    token_endpoint_auth_methods_supported = fields.List(
        fields.String(),
        required=True,
        metadata={"description": "none: a login needs no client credentials"},
    )
    introspection_endpoint = fields.String(required=True, metadata={"description": "RFC 7662"})
    introspection_endpoint_auth_methods_supported = fields.List(
        fields.String(),
        required=True,
        metadata={"description": "HTTP Basic of a client of INTROSPECTION_CLIENTS"},
    )
    id_token_signing_alg_values_supported = fields.List(
        fields.String(),
        required=True,
        metadata={"description": "The algorithm access tokens are signed with"},
    )
    subject_types_supported = fields.List(
        fields.String(),
        required=True,
        metadata={"description": "public: sub is the user's id, the same for every client"},
    )
    service_documentation = fields.String(
        required=True, metadata={"description": "This service's API documentation"}
    )
