"""Endpoints of the signed-in user's login sessions: list them, end one."""
