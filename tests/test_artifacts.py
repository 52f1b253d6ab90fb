import pytest

from refusal_lens.artifacts import atomic_dir


def test_atomic_dir_replaces_the_target_only_when_the_block_succeeds(tmp_path):
    target = tmp_path / "adapter"
    with atomic_dir(target) as tmp:
        (tmp / "weights").write_text("first")
    with atomic_dir(target) as tmp:
        (tmp / "weights").write_text("second")
    assert (target / "weights").read_text() == "second"
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]


def test_atomic_dir_leaves_the_old_target_and_no_temporary_folder_after_an_error(tmp_path):
    target = tmp_path / "saes"
    with atomic_dir(target) as tmp:
        (tmp / "cfg.json").write_text("{}")
    with pytest.raises(KeyboardInterrupt), atomic_dir(target) as tmp:
        (tmp / "cfg.json").write_text("half")
        raise KeyboardInterrupt
    assert (target / "cfg.json").read_text() == "{}"
    assert [p.name for p in tmp_path.iterdir()] == ["saes"]
