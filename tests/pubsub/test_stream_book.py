"""The stream books (``pybus.pubsub._book.StreamBook``) without a socket: frames are given as
plain numbers, and every expectation is worked out by hand from docs/wire.md's rules (a
stream is numbered from 1; a frame carries ``count`` messages from ``first``; a position frame
says the next sequence number; a join snapshot says where each stream stood)."""

from __future__ import annotations

from pybus.pubsub._book import MAX_TRACKED_TOPICS, StreamBook

A, B = 0xA, 0xB  # publisher ids


def test_in_order_frames_lose_nothing() -> None:
    book = StreamBook()
    assert book.account("t", b"t", A, 5, 3) == 0  # first frame seen: sets the expectation
    assert book.account("t", b"t", A, 8, 2) == 0
    assert book.account("t", b"t", B, 1, 4) == 0  # another publisher's stream
    st = book.stats()
    assert st["received"] == 9 and st["received_by_topic"] == {"t": 9}
    assert (st["lost"], st["gaps"], st["out_of_order"], st["streams"]) == (0, 0, 0, 2)
    assert book.next_seq == {(A, b"t"): 10, (B, b"t"): 5}


def test_a_gap_counts_the_missing_messages_once() -> None:
    book = StreamBook()
    book.account("t", b"t", A, 1, 2)  # 1..2
    assert book.account("t", b"t", A, 7, 1) == 4  # 3..6 missing
    assert book.account("t", b"t", A, 8, 1) == 0
    st = book.stats()
    assert (st["lost"], st["lost_by_topic"], st["gaps"]) == (4, {"t": 4}, 1)
    assert st["received"] == 4


def test_older_sequences_are_out_of_order_not_lost() -> None:
    book = StreamBook()
    book.account("t", b"t", A, 1, 10)  # expects 11
    assert book.account("t", b"t", A, 4, 3) == 0  # 4..6 again: 3 out of order
    assert book.account("t", b"t", A, 9, 5) == 0  # 9..13: 2 of them (9, 10) behind
    st = book.stats()
    assert (st["out_of_order"], st["lost"], st["gaps"]) == (5, 0, 0)
    assert book.next_seq[(A, b"t")] == 14  # the frame's end sets the next expectation


def test_positions_reveal_lost_tails_and_old_ones_change_nothing() -> None:
    book = StreamBook()
    book.account("t", b"t", A, 1, 3)  # expects 4
    assert book.position("t", b"t", A, 4) == 0  # nothing missing
    assert book.position("t", b"t", A, 9) == 5  # 4..8 sent, never arrived
    assert book.position("t", b"t", A, 6) == 0  # older than what is known: no change
    st = book.stats()
    assert (st["positions"], st["lost"], st["gaps"], st["received"]) == (3, 5, 1, 3)
    assert book.next_seq[(A, b"t")] == 9


def test_a_join_snapshot_starts_known_streams_and_later_ones_at_one() -> None:
    book = StreamBook()
    book.join(A, False, [(b"x", 40)])
    book.join(A, True, [(b"y", 7)])  # the last chunk: A's later streams start at 1
    assert book.account("x", b"x", A, 42, 1) == 2  # 40, 41 lost since the arrival
    assert book.account("y", b"y", A, 7, 1) == 0
    assert book.account("z", b"z", A, 3, 1) == 2  # a new stream of A: 1, 2 lost
    assert book.account("z", b"z", B, 3, 1) == 0  # B sent no snapshot: first frame sets it
    # a snapshot never moves a stream already seen
    book.join(A, True, [(b"y", 100)])
    assert book.next_seq[(A, b"y")] == 8


def test_after_a_new_pattern_new_streams_are_not_losses() -> None:
    book = StreamBook()
    book.join(A, True, [])
    book.stop_joining()
    assert book.account("new", b"new", A, 50, 1) == 0
    book.join(A, True, [])  # a snapshot still queued from before: predates the pattern
    assert book.account("newer", b"newer", A, 9, 1) == 0
    assert book.stats()["lost"] == 0


def test_the_streams_bound_forgets_the_oldest_and_its_publishers_join() -> None:
    book = StreamBook(max_streams=2)
    book.join(A, True, [(b"a1", 5)])
    book.account("b1", b"b1", B, 1, 1)
    book.account("a2", b"a2", A, 1, 1)  # a third stream: (A, a1) goes, and A's join with it
    assert list(book.next_seq) == [(B, b"b1"), (A, b"a2")]
    assert A not in book.joined
    # A's next new stream may be one that was forgotten: not counted from 1
    assert book.account("a3", b"a3", A, 6, 1) == 0
    assert len(book.next_seq) == 2 and book.stats()["lost"] == 0


def test_history_floors_drop_live_duplicates_and_move_the_stream() -> None:
    book = StreamBook()
    book.account("t", b"t", A, 1, 2)  # expects 3
    book.set_floor((A, b"t"), 10)  # a snapshot held up to 10
    assert book.next_seq[(A, b"t")] == 11
    assert book.after_floor(A, b"t", 5, 4, list("5678")) is None  # all held: 4 duplicates
    assert book.after_floor(A, b"t", 9, 4, list("9abc")) == (11, 2, ["b", "c"])
    assert book.floors == {}  # passed: live frames flow again
    assert book.after_floor(A, b"t", 13, 1, ["d"]) == (13, 1, ["d"])
    assert book.stats()["history_duplicates"] == 6
    book.set_floor((B, b"t"), 3)
    assert book.is_duplicate(B, b"t", 3) and not book.is_duplicate(B, b"t", 4)
    assert book.stats()["history_duplicates"] == 7


def test_topics_beyond_the_tracking_bound_count_as_other() -> None:
    book = StreamBook(max_streams=MAX_TRACKED_TOPICS + 10)
    for i in range(MAX_TRACKED_TOPICS + 3):
        t = f"t{i}"
        book.account(t, t.encode(), A, 1, 1)
    st = book.stats()
    assert len(st["received_by_topic"]) == MAX_TRACKED_TOPICS + 1
    assert st["received_by_topic"]["<other>"] == 3
    assert st["received"] == MAX_TRACKED_TOPICS + 3


def _frame(topic: str, pid: int, first: int, count: int) -> tuple:
    # the channel's recv_batches tuple: (topic, topic bytes, pid, first, ts, messages, bytes)
    return (topic, topic.encode(), pid, first, 0, [None] * count, 0)


def test_a_receive_accounted_at_once_is_worked_out_as_frame_by_frame() -> None:
    book = StreamBook()
    book.join(B, True, [(b"j", 3)])  # B's stream "j" stood at 3; its later ones start at 1
    frames = [
        _frame("t", A, 1, 2),  # first seen: sets the expectation (3)
        _frame("t", A, 3, 1),  # in order
        _frame("t", A, 6, 2),  # 4..5 missing: a gap of 2
        _frame("t", A, 2, 1),  # wholly behind: 1 out of order, expectation stays 8
        _frame("t", A, 8, 1),  # in order again
        _frame("j", B, 5, 1),  # 3..4 missing
        _frame("n", B, 2, 1),  # a stream B started later: 1 missing
        _frame("u", A, 9, 3),  # a new topic: its first frame
    ]
    gaps = book.account_frames(frames)
    assert gaps == [("t", A, 6, 2), ("j", B, 5, 2), ("n", B, 2, 1)]
    st = book.stats()
    assert st["received_by_topic"] == {"t": 7, "j": 1, "n": 1, "u": 3}  # repeats too
    assert st["lost_by_topic"] == {"t": 2, "j": 2, "n": 1}
    assert (st["gaps"], st["out_of_order"]) == (3, 1)
    assert book.next_seq == {(A, b"t"): 9, (B, b"j"): 6, (B, b"n"): 3, (A, b"u"): 12}
