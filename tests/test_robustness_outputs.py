"""Never lose a user's file: overwrite rules, unwritable outputs, stale temporaries."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import synthetic_micrograph, write_png

from microcae.cli import main
from microcae.util import atomic
from microcae.util.atomic import (
    TEMP_SUFFIX,
    atomic_path,
    check_output_files,
    check_output_folder,
    remove_stale_temporaries,
    temp_prefix,
    write_bytes_atomic,
)
from microcae.util.errors import MicrocaeError

SRC = Path(__file__).resolve().parents[1] / "src"


def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Every file and folder under ``root``: mode and SHA-256 of the bytes (folders: "dir")."""
    state = {}
    for path in sorted(root.rglob("*")):
        kind = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
        state[str(path.relative_to(root))] = (stat.S_IMODE(path.lstat().st_mode), kind)
    return state


def one_line_error(capsys, rc: int) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    assert len(err) == 1 and err[0].startswith("microcae: error: "), err
    assert "Traceback" not in err[0]
    return err[0]


@pytest.fixture
def lab(tmp_path) -> Path:
    """A user's folder: two micrographs and a notes file."""
    folder = tmp_path / "lab"
    write_png(folder / "m1.png", synthetic_micrograph(64, 64, seed=1))
    write_png(folder / "m2.png", synthetic_micrograph(64, 80, seed=2))
    (folder / "notes.txt").write_text("etched 10 s in nital\n")
    return folder


@pytest.fixture
def codec_files(tmp_path, lab, tiny_model_file) -> Path:
    """``lab`` encoded into ``tmp_path/lat`` (m1.mcl, m2.mcl)."""
    assert main(["encode", str(lab), "-m", str(tiny_model_file), "-o", str(tmp_path / "lat"),
                 "--no-progress"]) == 0
    return tmp_path / "lat"


# ---------------------------------------------------------------- prepare --overwrite (item 1, 16)

def test_prepare_overwrite_onto_its_own_input_folder_deletes_nothing(tmp_path, lab, capsys):
    before = snapshot(tmp_path)
    rc = main(["prepare", str(lab), "--out", str(lab), "--overwrite", "--tile", "32",
               "--no-progress"])
    line = one_line_error(capsys, rc)
    assert f"{lab}: exists and is not a microcae prepared set" in line
    assert snapshot(tmp_path) == before


def test_prepare_overwrite_refuses_other_folders_files_and_sets_with_extra_files(tmp_path, lab,
                                                                                 capsys):
    other = tmp_path / "other"
    other.mkdir()
    (other / "thesis.tex").write_text("chapter 1")
    plain = tmp_path / "plain.txt"
    plain.write_text("keep me")
    base = ["prepare", str(lab), "--tile", "32", "--no-progress", "--overwrite", "--out"]
    assert "is not a microcae prepared set" in one_line_error(capsys, main([*base, str(other)]))
    before = snapshot(tmp_path)
    assert "is not a prepared set's folder" in one_line_error(capsys, main([*base, str(plain)]))
    assert snapshot(tmp_path) == before  # no .plain.txt.old or anything else left behind
    ds = tmp_path / "ds"
    assert main([*base, str(ds)]) == 0
    (ds / "my_notes.txt").write_text("do not delete")
    before = snapshot(tmp_path)
    line = one_line_error(capsys, main([*base, str(ds)]))
    assert "holds files microcae did not write (my_notes.txt)" in line
    assert snapshot(tmp_path) == before


def test_prepare_overwrite_replaces_its_own_set_and_follows_the_umask(tmp_path, lab, capsys):
    ds = tmp_path / "ds"
    previous = os.umask(0o022)
    try:
        assert main(["prepare", str(lab), "-o", str(ds), "--tile", "32", "--no-progress"]) == 0
        assert stat.S_IMODE(ds.stat().st_mode) == 0o755
        line = one_line_error(capsys, main(["prepare", str(lab), "-o", str(ds), "--tile", "32",
                                            "--no-progress"]))
        assert "already exists (use --overwrite to replace it)" in line
        os.umask(0o077)
        assert main(["prepare", str(lab), "-o", str(ds), "--tile", "16", "--overwrite",
                     "--no-progress"]) == 0
    finally:
        os.umask(previous)
    assert stat.S_IMODE(ds.stat().st_mode) == 0o700
    assert json.loads((ds / "manifest.json").read_text())["tile"] == 16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "lab"]  # no temporaries


# ---------------------------------------------------------------- encode / decode --force (2, 3)

def test_decode_into_the_originals_folder_keeps_the_original(tmp_path, lab, codec_files,
                                                              tiny_model_file, capsys):
    before = snapshot(tmp_path)
    rc = main(["decode", str(codec_files / "m1.mcl"), "-m", str(tiny_model_file), "-o", str(lab),
               "--no-progress"])
    line = one_line_error(capsys, rc)
    assert line == (f"microcae: error: {lab / 'm1.png'}: already exists (use --force to "
                    "replace it)")
    assert snapshot(tmp_path) == before
    assert main(["decode", str(codec_files / "m1.mcl"), "-m", str(tiny_model_file), "-o",
                 str(lab), "--no-progress", "--force"]) == 0
    after = snapshot(tmp_path)
    changed = sorted(name for name in before if after[name] != before[name])
    assert changed == [os.path.join("lab", "m1.png")] and set(after) == set(before)


def test_decode_checks_every_target_before_writing_any(tmp_path, codec_files, tiny_model_file,
                                                       capsys):
    out = tmp_path / "dec"
    out.mkdir()
    (out / "m2.png").write_bytes(b"someone's picture")
    rc = main(["decode", str(codec_files), "-m", str(tiny_model_file), "-o", str(out),
               "--no-progress"])
    assert "m2.png: already exists" in one_line_error(capsys, rc)
    assert sorted(p.name for p in out.iterdir()) == ["m2.png"]  # m1.png not written either


def test_an_input_is_never_replaced_even_with_force(tmp_path, codec_files, tiny_model_file,
                                                    capsys):
    disguised = tmp_path / "dec" / "m1.png"  # a latent file with an image's name
    disguised.parent.mkdir()
    shutil.copy(codec_files / "m1.mcl", disguised)
    before = snapshot(tmp_path)
    rc = main(["decode", str(disguised), "-m", str(tiny_model_file), "-o", str(disguised.parent),
               "--force", "--no-progress"])
    assert "m1.png: is one of the inputs; it is never replaced" in one_line_error(capsys, rc)
    assert snapshot(tmp_path) == before


def test_encode_refuses_existing_latent_files_unless_forced(tmp_path, lab, codec_files,
                                                            tiny_model_file, capsys):
    before = snapshot(tmp_path)
    argv = ["encode", str(lab), "-m", str(tiny_model_file), "-o", str(codec_files),
            "--no-progress"]
    assert "m1.mcl: already exists (use --force" in one_line_error(capsys, main(argv))
    assert snapshot(tmp_path) == before
    (codec_files / "m2.mcl").unlink()
    assert "m1.mcl: already exists" in one_line_error(capsys, main(argv))
    assert not (codec_files / "m2.mcl").exists()  # checked before anything was written
    assert main([*argv, "--force"]) == 0
    assert sorted(p.name for p in codec_files.iterdir()) == ["m1.mcl", "m2.mcl"]


def test_reconstruct_refuses_to_replace_a_users_metrics_file(tmp_path, lab, tiny_model_file,
                                                             capsys):
    out = tmp_path / "rec"
    out.mkdir()
    (out / "metrics.csv").write_text("my own table\n")
    argv = ["reconstruct", str(lab / "m1.png"), "-m", str(tiny_model_file), "-o", str(out),
            "--no-progress"]
    assert "metrics.csv: already exists (use --force" in one_line_error(capsys, main(argv))
    assert sorted(p.name for p in out.iterdir()) == ["metrics.csv"]
    assert main([*argv, "--force"]) == 0
    assert (out / "m1.reconstruction.png").exists()


def test_two_inputs_with_one_output_name_are_refused(tmp_path, tiny_model_file, capsys):
    write_png(tmp_path / "a" / "x.png", synthetic_micrograph(32, 32, seed=1))
    write_png(tmp_path / "b" / "x.png", synthetic_micrograph(32, 32, seed=2))
    rc = main(["reconstruct", str(tmp_path / "a"), str(tmp_path / "b"), "-m",
               str(tiny_model_file), "-o", str(tmp_path / "o"), "--no-progress"])
    assert "same output name x.reconstruction.png" in one_line_error(capsys, rc)
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- unwritable outputs (item 4)

def _commands(tmp_path: Path, lab: Path, model: Path, codec: Path, out: Path) -> list[list[str]]:
    return [
        ["encode", str(lab), "-m", str(model), "-o", str(out), "--no-progress"],
        ["decode", str(codec), "-m", str(model), "-o", str(out), "--no-progress"],
        ["reconstruct", str(lab), "-m", str(model), "-o", str(out), "--no-progress"],
        ["prepare", str(lab), "-o", str(out / "ds"), "--tile", "32", "--no-progress"],
        ["keygen", str(out / "k.key")],
    ]


def test_an_output_under_a_file_is_one_line_for_every_command(tmp_path, lab, tiny_model_file,
                                                              codec_files, capsys):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    before = snapshot(tmp_path)
    for argv in _commands(tmp_path, lab, tiny_model_file, codec_files, blocker / "out"):
        line = one_line_error(capsys, main(argv))
        assert "cannot write" in line and str(blocker) in line, argv
    assert snapshot(tmp_path) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into read-only folders")
def test_a_read_only_folder_is_one_line_for_every_command(tmp_path, lab, tiny_model_file,
                                                          codec_files, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        for argv in _commands(tmp_path, lab, tiny_model_file, codec_files, locked / "out"):
            line = one_line_error(capsys, main(argv))
            assert "cannot write (Permission denied)" in line, argv
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


def test_the_output_check_comes_before_the_passphrase_prompt(tmp_path, lab, tiny_model_file,
                                                             capsys, monkeypatch):
    monkeypatch.delenv("MICROCAE_PASSPHRASE", raising=False)
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    rc = main(["encode", str(lab), "-m", str(tiny_model_file), "-o", str(blocker / "o"),
               "--passphrase", "--no-progress"])
    assert "cannot write" in one_line_error(capsys, rc)  # not a prompt, not "aborted"


def test_a_full_disk_while_writing_is_one_line_and_leaves_nothing(tmp_path, lab,
                                                                  tiny_model_file, capsys,
                                                                  monkeypatch):
    def full_disk(self, data):
        with open(self, "wb") as handle:
            handle.write(data[:10])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    out = tmp_path / "lat"
    rc = main(["encode", str(lab), "-m", str(tiny_model_file), "-o", str(out), "--no-progress"])
    assert one_line_error(capsys, rc).endswith("m1.mcl: cannot write (No space left on device)")
    assert list(out.iterdir()) == []


def test_check_output_files_rules(tmp_path):
    (tmp_path / "exists.txt").write_text("x")
    (tmp_path / "folder").mkdir()
    assert check_output_files([tmp_path / "new.txt", tmp_path / "sub" / "new.txt"]) == [
        tmp_path / "new.txt", tmp_path / "sub" / "new.txt"]
    assert not (tmp_path / "sub").exists()  # nothing is created by the check
    with pytest.raises(MicrocaeError, match="exists.txt: already exists \\(use --force"):
        check_output_files([tmp_path / "exists.txt"])
    check_output_files([tmp_path / "exists.txt"], force=True)
    with pytest.raises(MicrocaeError, match="is one of the inputs"):
        check_output_files([tmp_path / "exists.txt"], force=True,
                           protected=[tmp_path / "." / "exists.txt"])
    with pytest.raises(MicrocaeError, match="folder: is a folder"):
        check_output_files([tmp_path / "folder"], force=True)
    with pytest.raises(MicrocaeError, match="is a file, not a folder"):
        check_output_folder(tmp_path / "exists.txt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists.txt", "folder"]


# ---------------------------------------------------------------- stale temporaries (item 13)

def _dead_pid() -> int:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    return int(child.stdout)


def test_only_dead_processes_temporaries_of_this_host_are_swept(tmp_path):
    dead, alive = _dead_pid(), os.getpid()
    host = temp_prefix("x").split("-")[1]
    other_host = "0" * 8 if host != "0" * 8 else "1" * 8
    names = {
        "dead": f".a.mcl.~{dead}-{host}-k2j4h5_x{TEMP_SUFFIX}",
        "alive": f".b.mcl.~{alive}-{host}-abc12345{TEMP_SUFFIX}",
        "other host": f".c.mcl.~{dead}-{other_host}-abc{TEMP_SUFFIX}",
        "old pattern": ".d.mcl.x8y7z6.tmp",
        "user": "notes.txt",
    }
    for name in names.values():
        (tmp_path / name).write_bytes(b"")
    (tmp_path / f".set.~{dead}-{host}-q1w2e3r4{TEMP_SUFFIX}").mkdir()
    (tmp_path / f".set.~{dead}-{host}-q1w2e3r4{TEMP_SUFFIX}" / "tiles.npy").write_bytes(b"1")
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == sorted(
        [names["dead"], f".set.~{dead}-{host}-q1w2e3r4{TEMP_SUFFIX}"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        n for k, n in names.items() if k != "dead")


def test_a_write_killed_with_sigkill_leaves_a_temporary_that_the_next_write_removes(tmp_path):
    script = ("import os, signal, sys\n"
              "from microcae.util.atomic import atomic_path\n"
              "with atomic_path(sys.argv[1]) as tmp:\n"
              "    tmp.write_bytes(b'half')\n"
              "    os.kill(os.getpid(), signal.SIGKILL)\n")
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    run = subprocess.run([sys.executable, "-c", script, str(tmp_path / "a.mcl")], env=env)
    assert run.returncode == -signal.SIGKILL
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".a.mcl.~") and left[0].endswith(TEMP_SUFFIX)
    write_bytes_atomic(tmp_path / "b.mcl", b"new")
    assert [p.name for p in tmp_path.iterdir()] == ["b.mcl"]


def test_atomic_path_reports_write_errors_in_one_line_and_cleans_up(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "_swept", set())
    with pytest.raises(MicrocaeError, match=r"x\.bin: cannot write \(Read-only file system\)"):
        with atomic_path(tmp_path / "x.bin") as tmp:
            tmp.write_bytes(b"partial")
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
    with pytest.raises(KeyError):  # other errors pass through unchanged
        with atomic_path(tmp_path / "x.bin"):
            raise KeyError("bug")
    assert list(tmp_path.iterdir()) == []
    write_bytes_atomic(tmp_path / "x.bin", b"ok")
    assert (tmp_path / "x.bin").read_bytes() == b"ok"
    assert stat.S_IMODE((tmp_path / "x.bin").stat().st_mode) == 0o666 & ~atomic._current_umask()
