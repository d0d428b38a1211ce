"""Credentials stay fresh without traffic, and an early refresh keeps nobody waiting.

- ``refresh_forever`` (the service's ``kd-credentials`` thread) renews a renewable Vault
  token ahead of its expiry although no request reads anything: Vault's own record of the
  token (a root lookup, not the dispatcher's account) shows it outliving its first TTL.
- While one caller refreshes a still-valid credential early, another gets the current
  client at once instead of waiting on the lock held across the fetch. The fetch is held
  for real: the kubeconfig is a named pipe that the test writes only when it chooses.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from dispatcher.credentials import CredentialProvider, VaultSession
from dispatcher.supervise import Supervisor
from tests.credentials.conftest import (
    Clock,
    a100_from_kv,
    from_file,
    settings_with,
    token_auth,
)
from tests.stack import StackEnv


def wait_for(predicate: Any, what: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_a_quiet_dispatchers_vault_token_is_renewed_before_it_expires(
    stack_env: StackEnv, root_vault: Any
) -> None:
    created = root_vault.auth.token.create(
        policies=[stack_env.vault.policy], ttl="4s", explicit_max_ttl="2m", renewable=True
    )
    token = created["auth"]["client_token"]
    born = time.time()
    vault = token_auth(stack_env, token, renew_ahead_fraction=0.5)
    session = VaultSession(vault)
    provider = CredentialProvider(settings_with(vault, a100_from_kv(stack_env)), session)
    supervisor = Supervisor()
    thread = supervisor.spawn("kd-credentials", lambda t: provider.refresh_forever(t.wait, 0.2))
    try:
        # No request is made: only the refresher talks to Vault. The token, created with
        # 4 s to live, is still valid 6 s after its creation.
        wait_for(lambda: time.time() > born + 6, "6 s to pass", 10)
        lookup = root_vault.lookup_token(token)
        assert lookup["data"]["ttl"] > 0, lookup["data"]
    finally:
        thread.stop()
        thread.join(5)
        provider.close()
        session.close()


def test_while_one_caller_refreshes_early_another_gets_the_current_client_at_once(
    stack_env: StackEnv, tmp_path: Path, clock: Clock
) -> None:
    kubeconfig = Path(stack_env.clusters["plane"].restricted_kubeconfig).read_text()
    pipe = tmp_path / "kubeconfig"
    os.mkfifo(pipe, 0o600)

    def write_once() -> None:
        with pipe.open("w") as out:
            out.write(kubeconfig)

    provider = CredentialProvider(settings_with(None, from_file("plane", pipe)), None, clock=clock)
    first_writer = threading.Thread(target=write_once, daemon=True)
    first_writer.start()
    try:
        current = provider.api_client("plane")
        first_writer.join(5)
        clock.advance(1000)  # past the 900 s re-read age: due, but not expired (no expiry)
        with ThreadPoolExecutor(2) as pool:
            refreshing = pool.submit(provider.api_client, "plane")
            # The refresh is reading the pipe once a writer may open it (a reader waits).
            writer = wait_for(_writer_fd(pipe), "the refresh to read the kubeconfig", 10)
            try:
                other = pool.submit(provider.api_client, "plane")
                assert other.result(timeout=10) is current  # did not wait for the refresh
                assert not refreshing.done()
            finally:
                os.write(writer, kubeconfig.encode())
                os.close(writer)
            refreshed = refreshing.result(timeout=10)
        assert refreshed is not current
        assert provider.api_client("plane") is refreshed
    finally:
        provider.close()


def _writer_fd(pipe: Path) -> Any:
    def opened() -> int | None:
        try:
            return os.open(pipe, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # ENXIO: nobody reads the pipe yet
            return None

    return opened
