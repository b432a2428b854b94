"""Endpoints of the second factor: TOTP enrolment, confirmation and removal."""
