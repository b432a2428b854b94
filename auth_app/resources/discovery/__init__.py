"""Discovery metadata for resource servers (OpenID Connect Discovery, RFC 8414)."""
