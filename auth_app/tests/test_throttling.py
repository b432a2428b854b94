"""Throttles that stop guessing without locking the owner out, against the real Redis.

Wrong passwords count per account and client address (login, password change
and account deletion alike); the per-address limits of register, login and
refresh each have their own bucket; behind ``TRUSTED_PROXY_COUNT`` proxies the
address is the one the proxies saw, whatever a client writes into
X-Forwarded-For.
"""

from __future__ import annotations

import threading

from auth_app.login_throttle import LoginThrottle
from auth_app.tests.conftest import PASSWORD, Accounts, bearer

LOGIN = "/api/v1/auth/login"
PASSWORD_CHANGE = "/api/v1/auth/password"
ME = "/api/v1/auth/me"
ATTACKER = {"REMOTE_ADDR": "198.51.100.66"}
OWNER = {"REMOTE_ADDR": "192.0.2.10"}
NEW_PASSWORD = "a-Different-passw0rd!"


def login(client, environ, password=PASSWORD, **identifier):
    identifier = identifier or {"email": "ada@example.com"}
    return client.post(LOGIN, json={**identifier, "password": password}, environ_base=environ)


def assert_throttled(response):
    assert response.status_code == 429, response.json
    assert 0 < int(response.headers["Retry-After"]) <= 900
    assert response.json["code"] == 429 and response.json["message"]


def test_wrong_passwords_by_username_do_not_lock_the_owner_out_by_email(client, accounts):
    accounts.register("ada")
    for _ in range(5):
        assert login(client, ATTACKER, "wrong-password", username="ada").status_code == 401
    # That address is held back for ada, her right password included...
    assert_throttled(login(client, ATTACKER, username="ada"))
    assert_throttled(login(client, ATTACKER))
    # ...and ada at her own address gets in, again and again.
    for _ in range(3):
        assert login(client, OWNER).status_code == 200


def test_email_and_username_forms_of_one_account_share_its_count(client, accounts):
    accounts.register("ada")
    for _ in range(3):
        assert login(client, ATTACKER, "wrong-password", username="ADA").status_code == 401
    for _ in range(2):
        assert login(client, ATTACKER, "wrong-password").status_code == 401
    assert_throttled(login(client, ATTACKER, "wrong-password", username="ada"))
    assert_throttled(login(client, ATTACKER, "wrong-password", email="Ada@Example.com"))


def test_an_unknown_account_is_throttled_per_address_like_a_known_one(client, accounts):
    accounts.register("ada")
    for name in ("ada", "ghost"):
        answers = [login(client, ATTACKER, "wrong-password", username=name) for _ in range(6)]
        assert [a.status_code for a in answers] == [401] * 5 + [429], name
        assert answers[0].json == answers[4].json
        assert_throttled(answers[5])
    assert login(client, OWNER, "wrong-password", username="ghost").status_code == 401


def test_wrong_current_passwords_at_password_change_are_throttled(client, accounts):
    _, tokens = register_and_login(accounts)
    stolen = bearer(tokens["access_token"])

    def change(current, environ):
        return client.post(
            PASSWORD_CHANGE,
            json={"current_password": current, "new_password": NEW_PASSWORD},
            headers=stolen,
            environ_base=environ,
        )

    for _ in range(5):
        assert change("guess-number-n", ATTACKER).status_code == 401
    # The token's holder cannot go on guessing, not even with the right password...
    assert_throttled(change(PASSWORD, ATTACKER))
    # ...the failures are the login counter's for that address...
    assert_throttled(login(client, ATTACKER))
    # ...and the owner elsewhere still logs in and changes her password.
    assert login(client, OWNER).status_code == 200
    assert change(PASSWORD, OWNER).status_code == 200


def test_wrong_passwords_at_account_deletion_are_throttled(client, accounts):
    _, tokens = register_and_login(accounts)
    stolen = bearer(tokens["access_token"])

    def delete(password, environ):
        return client.delete(ME, json={"password": password}, headers=stolen, environ_base=environ)

    for _ in range(5):
        assert delete("guess-number-n", ATTACKER).status_code == 401
    assert_throttled(delete(PASSWORD, ATTACKER))
    assert client.get(ME, headers=stolen).status_code == 200  # not deleted
    assert login(client, OWNER).status_code == 200


def test_login_and_current_password_failures_add_up(client, accounts):
    _, tokens = register_and_login(accounts)
    for _ in range(3):
        assert login(client, ATTACKER, "wrong-password").status_code == 401
    for _ in range(2):
        answer = client.delete(
            ME,
            json={"password": "wrong-password"},
            headers=bearer(tokens["access_token"]),
            environ_base=ATTACKER,
        )
        assert answer.status_code == 401
    assert_throttled(login(client, ATTACKER))


def test_a_right_password_clears_only_its_own_address(client, accounts):
    accounts.register("ada")
    for _ in range(4):
        assert login(client, ATTACKER, "wrong-password").status_code == 401
        assert login(client, OWNER, "wrong-password").status_code == 401
    assert login(client, OWNER).status_code == 200
    assert login(client, ATTACKER, "wrong-password").status_code == 401
    assert_throttled(login(client, ATTACKER))
    for _ in range(5):
        assert login(client, OWNER, "wrong-password").status_code == 401
    assert_throttled(login(client, OWNER))


def test_a_burst_of_parallel_guesses_gets_only_the_limit_checked(redis_client, redis_prefix):
    throttle = LoginThrottle(redis_client, f"{redis_prefix}burst:", max_failures=5, window=900)
    allowed: list[bool] = []
    start = threading.Barrier(20)

    def guess() -> None:
        start.wait()
        allowed.append(throttle.attempt("user:ada", "198.51.100.66") is None)

    threads = [threading.Thread(target=guess) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert allowed.count(True) == 5
    assert throttle.attempt("user:ada", "192.0.2.10") is None


def test_throttle_keys_are_small_and_all_expire(make_app, redis_client):
    app = make_app()
    client = app.test_client()
    prefix = app.extensions["settings"].redis_key_prefix
    for index in range(3):
        name = f"{'x' * 240}{index}@example.com"
        login(client, {"REMOTE_ADDR": f"2001:db8::{index}"}, "wrong-password", email=name)
    keys = list(redis_client.scan_iter(match=f"{prefix}login_failures:*"))
    assert len(keys) == 3
    assert all(len(key) == len(prefix) + len("login_failures:") + 64 for key in keys)
    assert all(0 < redis_client.ttl(key) <= 900 for key in keys)


def register_and_login(accounts: Accounts):
    user = accounts.register("ada")
    return user, login_ok(accounts.client)


def login_ok(client):
    response = login(client, OWNER)
    assert response.status_code == 200, response.json
    return response.json


# -- per-address limits (flask-limiter, RATELIMIT_AUTH) ------------------------------


def limited_client(make_app, **settings):
    return make_app(RATELIMIT_ENABLED=True, RATELIMIT_AUTH="2/minute", **settings).test_client()


def send(client, endpoint, environ=None, headers=None):
    bodies = {
        "register": {"email": "x@example.com", "username": "x", "password": "short"},
        "login": {"email": "nobody@example.com", "password": "wrong-password"},
        "refresh": {"refresh_token": "not-a-token"},
    }
    return client.post(
        f"/api/v1/auth/{endpoint}",
        json=bodies[endpoint],
        environ_base=environ or ATTACKER,
        headers=headers or {},
    )


def test_register_login_and_refresh_each_have_their_own_bucket_per_address(make_app):
    client = limited_client(make_app)
    for endpoint in ("register", "login", "refresh"):
        assert 429 not in [send(client, endpoint).status_code for _ in range(2)], endpoint
    for endpoint in ("register", "login", "refresh"):
        answer = send(client, endpoint)
        assert answer.status_code == 429, endpoint
        assert 0 < int(answer.headers["Retry-After"]) <= 60
        assert send(client, endpoint, OWNER).status_code != 429, endpoint


def test_behind_one_proxy_each_forwarded_client_has_its_own_limit(make_app):
    client = limited_client(make_app, TRUSTED_PROXY_COUNT=1)
    proxy = {"REMOTE_ADDR": "10.0.0.1"}

    def from_client(address: str, spoofed: str | None = None):
        forwarded = f"{spoofed}, {address}" if spoofed else address
        return send(client, "login", proxy, {"X-Forwarded-For": forwarded}).status_code

    assert [from_client("203.0.113.1") for _ in range(2)] == [401, 401]
    # Whatever the client writes further left, it is the address the proxy saw.
    assert from_client("203.0.113.1", spoofed="203.0.113.99") == 429
    assert from_client("203.0.113.1", spoofed="198.51.100.1, 198.51.100.2") == 429
    assert from_client("203.0.113.2") == 401
    # A request that did not come through the proxy is its peer's.
    assert send(client, "login", proxy).status_code == 401


def test_without_trusted_proxies_x_forwarded_for_is_ignored(make_app):
    client = limited_client(make_app)
    statuses = [
        send(client, "login", headers={"X-Forwarded-For": f"203.0.113.{n}"}).status_code
        for n in range(3)
    ]
    assert statuses == [401, 401, 429]


def test_behind_one_proxy_the_login_throttle_counts_the_forwarded_address(make_app):
    client = make_app(TRUSTED_PROXY_COUNT=1).test_client()
    Accounts(client).register("ada")
    proxy = {"REMOTE_ADDR": "10.0.0.1"}

    def through_proxy(forwarded: str, password: str):
        return client.post(
            LOGIN,
            json={"email": "ada@example.com", "password": password},
            headers={"X-Forwarded-For": forwarded},
            environ_base=proxy,
        )

    for n in range(5):
        spoofed = f"192.0.2.{n}, 203.0.113.1"
        assert through_proxy(spoofed, "wrong-password").status_code == 401
    assert_throttled(through_proxy("192.0.2.10, 203.0.113.1", PASSWORD))
    assert through_proxy("203.0.113.2", PASSWORD).status_code == 200
