"""The bounded memory behind "job handed out again" (the jobs a worker took) and "report a job twice"."""

from worker.seen_keys import SeenKeys


def test_a_key_is_new_once():
    seen = SeenKeys(memory=3)
    assert seen.add(("job-1", 1)) is True
    assert seen.add(("job-1", 1)) is False
    assert seen.add(("job-1", 2)) is True


def test_the_oldest_key_leaves_past_the_memory():
    seen = SeenKeys(memory=3)
    for key in ("a", "b", "c", "d"):
        assert seen.add(key)
    assert len(seen) == 3
    assert seen.add("a") is True  # forgotten: the oldest left when "d" came
    assert seen.add("d") is False


def test_a_forgotten_key_is_new_again_and_forgetting_an_unknown_one_is_harmless():
    seen = SeenKeys(memory=2)
    seen.add("report#1")
    seen.forget("report#1")
    seen.forget("never-seen")
    assert seen.add("report#1") is True
    seen.add("x")
    seen.add("y")  # "report#1" leaves
    seen.forget("report#1")  # evicted already: a rejected report's key may be gone by the time it is forgotten
    assert len(seen) == 2
