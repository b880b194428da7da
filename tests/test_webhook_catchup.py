"""Which ref moves a node announces when it starts delivering (webhooks/catchup.py), decided
from the refs last announced, the refs git holds, and which objects this copy has."""

from __future__ import annotations

from bulwark.webhooks.catchup import announced_updates, unannounced

ZERO = "0" * 40
A, B, C = "a" * 40, "b" * 40, "c" * 40


def have(*oids: str) -> set[str]:
    return set(oids)


def test_nothing_moved_nothing_is_said() -> None:
    refs = {"refs/heads/main": A, "refs/tags/v1": B}
    assert unannounced(refs, dict(refs), have(A, B).__contains__) == []


def test_a_move_a_creation_and_a_deletion_git_holds_are_said_in_ref_order() -> None:
    announced = {"refs/heads/main": A, "refs/tags/v1": A}
    actual = {"refs/heads/main": B, "refs/heads/feature": B}
    assert unannounced(announced, actual, have(A, B).__contains__) == [
        (ZERO, B, "refs/heads/feature"),
        (A, B, "refs/heads/main"),
        (A, ZERO, "refs/tags/v1"),
    ]


def test_a_copy_behind_what_was_announced_says_nothing_of_it() -> None:
    # A replica holds the announcement of a push (metadata) whose objects it never fetched:
    # not a move back, not a deletion.
    announced = {"refs/heads/main": C, "refs/heads/new": C}
    actual = {"refs/heads/main": A}
    assert unannounced(announced, actual, have(A).__contains__) == []


def test_a_forced_move_back_to_an_older_commit_is_said() -> None:
    assert unannounced({"refs/heads/main": B}, {"refs/heads/main": A}, have(A, B).__contains__) == [
        (B, A, "refs/heads/main")
    ]


def test_only_branches_and_tags_are_kept_as_announced() -> None:
    updates = [(ZERO, A, "refs/heads/main"), (ZERO, A, "refs/tags/v1"), (ZERO, A, "refs/notes/commits"),
               (ZERO, A, "refs/pull/1/head")]
    assert announced_updates(updates) == updates[:2]
