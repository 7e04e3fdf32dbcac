"""Routers are pure and synchronous, so their tests are exact."""

from __future__ import annotations

from collections import Counter

import pytest

from catga_zmq import ConfigError
from catga_zmq.membership import Peer
from catga_zmq.routing import ROUTERS, LocalFirstRouter, RoundRobinRouter, Router, make_router


def peer(node_id: str, *, local: bool = False) -> Peer:
    return Peer(
        node_id, f"tcp://127.0.0.1:1/{node_id}", f"tcp://127.0.0.1:2/{node_id}", 1, local=local
    )


def spread(router: Router, candidates: list[Peer], n: int, key: str | None = None) -> Counter[str]:
    return Counter(router.select(candidates, None, key).node_id for _ in range(n))


def test_round_robin_is_exact() -> None:
    peers = [peer("a"), peer("b"), peer("c")]
    assert spread(RoundRobinRouter(), peers, 300) == {"a": 100, "b": 100, "c": 100}


def test_round_robin_visits_each_in_turn() -> None:
    peers = [peer("a"), peer("b"), peer("c")]
    router = RoundRobinRouter()
    picks = [router.select(peers, None, None).node_id for _ in range(9)]
    # Every window of 3 consecutive picks holds each node once.
    for i in range(len(picks) - 2):
        assert sorted(picks[i : i + 3]) == ["a", "b", "c"], picks


def test_round_robin_ignores_the_key() -> None:
    peers = [peer("a"), peer("b")]
    assert spread(RoundRobinRouter(), peers, 100, key="same") == {"a": 50, "b": 50}


def test_round_robin_single_candidate() -> None:
    only = peer("a")
    router = RoundRobinRouter()
    assert all(router.select([only], None, None) is only for _ in range(10))


def test_round_robin_follows_a_changed_candidate_list() -> None:
    router = RoundRobinRouter()
    spread(router, [peer("a"), peer("b"), peer("c")], 7)
    two = [peer("x"), peer("y")]
    assert spread(router, two, 200) == {"x": 100, "y": 100}


def test_local_first_picks_the_local_peer() -> None:
    local = peer("me", local=True)
    for candidates in (
        [peer("a"), local, peer("b")],
        [local, peer("a")],
        [peer("a"), peer("b"), local],
    ):
        router = LocalFirstRouter()
        assert spread(router, candidates, 50) == {"me": 50}


def test_local_first_without_local_goes_round_robin() -> None:
    peers = [peer("a"), peer("b"), peer("c")]
    assert spread(LocalFirstRouter(), peers, 300) == {"a": 100, "b": 100, "c": 100}


def test_local_first_uses_the_given_fallback() -> None:
    class Last(Router):
        name = "last"

        def select(self, candidates, message, key):  # type: ignore[no-untyped-def]
            return candidates[-1]

    router = LocalFirstRouter(fallback=Last())
    assert spread(router, [peer("a"), peer("b")], 10) == {"b": 10}


@pytest.mark.parametrize(
    ("name", "cls"), [("round_robin", RoundRobinRouter), ("local_first", LocalFirstRouter)]
)
def test_make_router(name: str, cls: type[Router]) -> None:
    router = make_router(name)
    assert type(router) is cls
    assert router.name == name
    assert make_router(name) is not router  # a fresh router (own counter) each time


def test_every_router_name_is_buildable() -> None:
    for name, cls in ROUTERS.items():
        assert cls.name == name
        assert isinstance(make_router(name), cls)


def test_make_router_unknown_name() -> None:
    with pytest.raises(ConfigError, match="routing 'nope' is not known") as info:
        make_router("nope")
    assert "round_robin" in info.value.message and "local_first" in info.value.message
