"""What both services and the workers share at run time.

Configuration from the environment and the settings both web apps have
(``config``), logging with request ids (``logging``), database plumbing
(``db``; ``flask_db`` for the web apps' per-request session), RS256 keys and
token verification (``keys``, ``tokens``, ``auth``, ``jwks``), the event
catalogue and the transactional outbox (``events``, ``outbox``), the field
types HTTP bodies and events share (``fields``), and the web plumbing
(``web``, ``gunicorn_worker``). Nothing here imports an app or a worker;
test support lives in ``tests/support``, outside the distribution.
"""
