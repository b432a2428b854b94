"""Endpoints of the security event log: the user's own, and every user's for administrators."""
