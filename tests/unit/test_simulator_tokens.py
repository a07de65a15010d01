"""The simulator's makers keep trading with valid tokens however long the market runs."""
from __future__ import annotations

import jwt

from simulator import runner
from simulator.runner import TOKEN_TTL, Simulator


def test_a_makers_token_is_minted_anew_half_way_through_its_life(tmp_path, monkeypatch) -> None:
    minted: list[tuple[str, int]] = []

    def mint(data_dir, account, *, ttl):
        minted.append((account, ttl))
        return f"token-{len(minted)}"

    monkeypatch.setattr(runner.keys, "mint_token", mint)
    sim = Simulator("127.0.0.1:1", tmp_path)
    now = [5.0]
    sim.clock = lambda: now[0]
    assert sim.md("mm-a") == (("authorization", "Bearer token-1"),)
    now[0] += TOKEN_TTL / 2 - 1
    assert sim.md("mm-a") == (("authorization", "Bearer token-1"),)
    assert sim.md("mm-b") == (("authorization", "Bearer token-2"),)  # each maker its own
    now[0] += 1
    assert sim.md("mm-a") == (("authorization", "Bearer token-3"),)
    assert minted == [("mm-a", TOKEN_TTL), ("mm-b", TOKEN_TTL), ("mm-a", TOKEN_TTL)]


def test_a_makers_token_lives_as_long_as_the_simulator_assumes(tmp_path) -> None:
    token = Simulator("127.0.0.1:1", tmp_path).md("mm-a")[0][1].removeprefix("Bearer ")
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["sub"] == "mm-a" and claims["exp"] - claims["iat"] == TOKEN_TTL


def test_tokens_are_minted_from_keys_on_a_read_only_mount(tmp_path, monkeypatch) -> None:
    """compose mounts the keys volume read-only for the simulator: keys that exist are only
    read (round 17: the folder's chmod and lock raised EROFS, and the simulator never traded)."""
    import errno

    from meshkit.launcher import keys

    made = keys.ensure_keys(tmp_path)

    def read_only(*_args, **_kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(keys.os, "chmod", read_only)
    monkeypatch.setattr(keys, "_locked", read_only)
    monkeypatch.setattr(keys, "_write_atomic", read_only)
    assert keys.ensure_keys(tmp_path) == made
    token = Simulator("127.0.0.1:1", tmp_path).md("mm-a")[0][1].removeprefix("Bearer ")
    public = jwt.PyJWKSet.from_json(made.jwks_path.read_text())[made.kid].key
    assert jwt.decode(token, public, algorithms=[keys.ALGORITHM], audience=keys.AUDIENCE)["sub"] == "mm-a"
