"""The public keys that verify this service's access tokens (RFC 7517)."""
