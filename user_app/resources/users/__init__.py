"""The users resource: a user's own profile, and administration of everyone's."""
