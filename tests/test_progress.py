import pytest

from refusal_lens.progress import batches


def test_batches_with_a_progress_bar_leave_stdout_clean(monkeypatch, capsys):
    monkeypatch.setenv("REFUSAL_LENS_PROGRESS", "1")
    print("before")
    chunks = list(batches(range(7), 3, "answering"))
    print("after")
    assert chunks == [[0, 1, 2], [3, 4, 5], [6]]
    assert capsys.readouterr().out == "before\nafter\n"


def test_batch_size_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        list(batches([1, 2], 0))
