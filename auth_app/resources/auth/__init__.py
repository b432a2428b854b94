"""Public auth endpoints: register, login, refresh, introspect."""
