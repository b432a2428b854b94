"""Endpoints of a signed-in user: me, logout, logout-all, password change, deletion."""
