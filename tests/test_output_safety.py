"""Output names that fit on disk, leftovers of killed runs, one run per name, unwritable folders and
full disks: each fails with a message that says what to do, and earlier saves stay intact."""

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from instant_lora.config import (FILE_NAME_MAX_BYTES, NAME_MAX_BYTES, NAME_SUFFIX_BYTES, WRITTEN_NAME_PATTERNS,
                                 is_safe_name, name_problem)
from instant_lora.errors import InstantLoraError
from instant_lora.lora.kohya_file import atomic_write_bytes, read_lora_file, save_lora_file, temp_name, write_sidecar
from instant_lora.output_paths import (check_writable, claim_output, clean_leftovers, lock_path, pid_alive,
                                       read_lock)
from instant_lora.train.state import INFO_FILE, STATE_FILE, load_state, save_state

DEAD_PID = 4_999_999  # above Linux's largest pid_max (2**22): never a running process
MATCH = {"network_dim": 4}


def lora_sd(value: float = 0.5) -> dict:
    return {"lora_unet_x.lora_down.weight": torch.full((4, 8), value), "lora_unet_x.lora_up.weight": torch.zeros(8, 4),
            "lora_unet_x.alpha": torch.tensor(4.0)}


def write_state(folder: Path, step: int) -> Path:
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([p], lr=0.1)
    p.grad = torch.ones(3)
    opt.step()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return save_state(folder, lora_sd=lora_sd(), optimizer=opt, scheduler=sched, scaler=None, step=step, epoch=1, match=MATCH)


# ---- 2. names that fit ------------------------------------------------------------------------

@pytest.mark.parametrize("name,ok,words", [
    ("é" * 115, False, ["230 bytes", f"at most {NAME_MAX_BYTES}"]),
    ("a" * 200, True, []),
    ("a" * NAME_MAX_BYTES, True, []),
    ("a" * (NAME_MAX_BYTES + 1), False, [f"{NAME_MAX_BYTES + 1} bytes"]),
    ("ok_name", True, []),
    ("Style v2 é", True, []),
    ("../x", False, ["must not contain", "/"]),
    (".hidden", False, ["must not start with a dot"]),
    ("..", False, ["dot"]),
    ("a/b", False, ["/"]),
    ("a\\b", False, ["\\"]),
    ("con:x", False, [":"]),
    ("a\nb", False, ["control characters"]),
    ("a\tb", False, ["control characters"]),
    ("a\x00b", False, ["control characters"]),
    ("a\x7fb", False, ["control characters"]),
    ("", False, ["empty"]),
    ("  ", False, ["empty"]),
    (" x", False, ["space"]),
    ("NUL", False, ["Windows"]),
    ("com1.v2", False, ["Windows"]),
])
def test_name_problem(name, ok, words):
    problem = name_problem(name)
    assert is_safe_name(name) is ok
    assert (problem is None) is ok
    for w in words:
        assert w in problem


def test_max_bytes_is_the_budget_in_bytes():
    assert NAME_MAX_BYTES + NAME_SUFFIX_BYTES == FILE_NAME_MAX_BYTES
    assert is_safe_name("abcd", max_bytes=4) and not is_safe_name("abcé", max_bytes=4)
    assert "is 5 bytes" in name_problem("abcé", max_bytes=4)


def test_patterns_cover_the_real_temp_names(monkeypatch):
    monkeypatch.setattr(os, "getpid", lambda: 4294967295)
    real = temp_name(Path("N-step00000000.safetensors")).name
    assert real.replace("N", "{}", 1) in WRITTEN_NAME_PATTERNS
    assert NAME_SUFFIX_BYTES == len(real) - 1


def test_every_file_of_the_longest_name_fits_on_disk(tmp_path, monkeypatch):
    name = "é" * (NAME_MAX_BYTES // 2)
    assert is_safe_name(name) and len(name.encode()) >= NAME_MAX_BYTES - 1
    monkeypatch.setattr(os, "getpid", lambda: 4294967295)  # the longest pid in temp names
    for pattern in WRITTEN_NAME_PATTERNS:
        (tmp_path / pattern.format(name)).write_bytes(b"")
    # the real writers, with that name
    path = save_lora_file(tmp_path / f"{name}-step00000001.safetensors", lora_sd(), {})
    write_sidecar(path)
    atomic_write_bytes(tmp_path / f"{name}-step00000001.preview.png", b"png")
    write_state(tmp_path / f"{name}-step00000001-state", 1)
    write_state(tmp_path / f"{name}-step00000001-state", 2)  # through -state.tmp and -state.old
    monkeypatch.undo()
    lock_path(tmp_path, name).unlink()  # written above as a plain file
    with claim_output(tmp_path, name):
        pass
    assert load_state(tmp_path / f"{name}-step00000001-state", MATCH)["step"] == 2
    # and one byte more than allowed does not fit: the budget is not arbitrary
    longest = max(WRITTEN_NAME_PATTERNS, key=len)
    try:
        (tmp_path / longest.format(name + "a" * (NAME_MAX_BYTES + 1 - len(name.encode())))).write_bytes(b"")
    except OSError as e:
        assert e.errno == errno.ENAMETOOLONG
    else:
        pytest.skip("this file system allows names over 255 bytes")


# ---- 3. leftovers of a killed run -----------------------------------------------------------

def make_state_dir(path: Path, step: int, whole: bool = True) -> Path:
    write_state(path, step)
    if not whole:
        (path / INFO_FILE).unlink()
    return path


def test_clean_leftovers_removes_only_what_belongs_to_the_name(tmp_path):
    d = tmp_path
    gone = [d / f".my_lora.safetensors.{DEAD_PID}.tmp", d / f".my_lora-step00000100.safetensors.{DEAD_PID}.tmp",
            d / f".my_lora-000002.json.{DEAD_PID}.tmp", d / f".my_lora.preview.png.{DEAD_PID}.tmp"]
    old_live = d / f".my_lora-step00000200.safetensors.{os.getpid()}.tmp"  # live pid, but untouched for an hour
    gone.append(old_live)
    for p in gone:
        p.write_bytes(b"x")
    os.utime(old_live, (time.time() - 3600, time.time() - 3600))
    in_flight = d / f".my_lora.safetensors.{os.getpid()}.tmp"
    kept = [in_flight, d / "my_lora.safetensors", d / "my_lora-step00000100.safetensors", d / "my_lora.json",
            d / ".my_lora.lock", d / f".other.safetensors.{DEAD_PID}.tmp", d / f".my_lora2.safetensors.{DEAD_PID}.tmp",
            d / f".my_lora.b.safetensors.{DEAD_PID}.tmp", d / f".my_lora-step0000010.safetensors.{DEAD_PID}.tmp",
            d / f"my_lora.safetensors.{DEAD_PID}.tmp"]
    for p in kept:
        p.write_bytes(b"x")
    # state folders: a whole one with a stale partial .tmp and a stale .old beside it
    whole = make_state_dir(d / "my_lora-step00000100-state", 100)
    partial_tmp = make_state_dir(d / "my_lora-step00000100-state.tmp", 150, whole=False)
    stale_old = make_state_dir(d / "my_lora-step00000100-state.old", 50)
    gone += [partial_tmp, stale_old]
    # another name's state leftovers
    other = [make_state_dir(d / "other-state.tmp", 1, whole=False), make_state_dir(d / "my_lora2-state.old", 1)]
    kept += [whole] + other
    removed = clean_leftovers(d, "my_lora")
    assert sorted(removed) == sorted(gone)
    assert all(not p.exists() for p in gone)
    assert all(p.exists() for p in kept)
    assert load_state(whole, MATCH)["step"] == 100


def test_crash_between_the_renames_restores_the_state(tmp_path, monkeypatch):
    folder = write_state(tmp_path / "my_lora-state", 10)
    real_rename = Path.rename

    def killed_at_second_rename(self, target):
        if self.name.endswith("-state.tmp"):
            raise KeyboardInterrupt  # the process dies here: no clean-up runs
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", killed_at_second_rename)
    with pytest.raises(KeyboardInterrupt):
        write_state(folder, 20)
    monkeypatch.undo()
    assert not folder.exists() and (tmp_path / "my_lora-state.old").is_dir() and (tmp_path / "my_lora-state.tmp").is_dir()
    removed = clean_leftovers(tmp_path, "my_lora")
    assert removed == [tmp_path / "my_lora-state.old"]
    assert removed.restored == [(tmp_path / "my_lora-state.tmp", folder)]
    assert load_state(folder, MATCH)["step"] == 20  # the newer whole state
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my_lora-state"]


def test_old_state_restored_when_the_new_one_is_partial(tmp_path):
    make_state_dir(tmp_path / "my_lora-step00000300-state.old", 300)
    make_state_dir(tmp_path / "my_lora-step00000300-state.tmp", 400, whole=False)
    cleaned = clean_leftovers(tmp_path, "my_lora")
    assert cleaned == [tmp_path / "my_lora-step00000300-state.tmp"]
    assert cleaned.restored == [(tmp_path / "my_lora-step00000300-state.old", tmp_path / "my_lora-step00000300-state")]
    assert load_state(tmp_path / "my_lora-step00000300-state", MATCH)["step"] == 300
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my_lora-step00000300-state"]
    # a partial .old alone is not a state: removed, nothing restored
    make_state_dir(tmp_path / "my_lora-000001-state.old", 1, whole=False)
    assert [p.name for p in clean_leftovers(tmp_path, "my_lora")] == ["my_lora-000001-state.old"]
    assert not (tmp_path / "my_lora-000001-state").exists()


def test_leftovers_of_a_running_run_with_a_longer_name_are_kept(tmp_path):
    with claim_output(tmp_path, "my_lora-step00000300"):  # a run literally named so, still going
        tmp = make_state_dir(tmp_path / "my_lora-step00000300-state.tmp", 1, whole=False)
        hidden = tmp_path / f".my_lora-step00000300.safetensors.{DEAD_PID}.tmp"
        hidden.write_bytes(b"x")
        assert clean_leftovers(tmp_path, "my_lora") == []
        assert tmp.exists() and hidden.exists()
    assert set(clean_leftovers(tmp_path, "my_lora")) == {tmp, hidden}


def test_clean_leftovers_of_a_missing_folder(tmp_path):
    assert clean_leftovers(tmp_path / "nothing", "x") == []


# ---- 4. one run per name and folder ---------------------------------------------------------

def test_second_claim_is_refused_naming_the_first(tmp_path):
    with claim_output(tmp_path, "my_lora") as lock:
        assert lock == tmp_path / ".my_lora.lock" and lock.name.startswith(".")
        info = json.loads(lock.read_text())
        assert info["pid"] == os.getpid() and info["host"] and info["started"] <= time.time()
        with pytest.raises(InstantLoraError) as e:
            with claim_output(tmp_path, "my_lora"):
                pass
        msg = str(e.value)
        assert f"'my_lora' is being trained by another run (pid {os.getpid()} since {time.strftime('%H:')}" in msg
        assert str(tmp_path) in msg and "pick another name or wait" in msg
        assert lock.exists()  # the refused claim did not remove the holder's lock
        with claim_output(tmp_path, "other_name"):  # other names are free
            pass
    assert not lock.exists()


def test_stale_lock_is_taken_over(tmp_path):
    import socket

    lock = lock_path(tmp_path, "my_lora")
    lock.write_text(json.dumps({"pid": DEAD_PID, "host": socket.gethostname(), "started": time.time() - 99}))
    with claim_output(tmp_path, "my_lora"):
        assert read_lock(lock)["pid"] == os.getpid()
    assert not lock.exists()


def test_lock_of_another_host_is_respected(tmp_path):
    lock = lock_path(tmp_path, "my_lora")
    lock.write_text(json.dumps({"pid": DEAD_PID, "host": "some-other-machine", "started": time.time()}))
    with pytest.raises(InstantLoraError, match="on some-other-machine"):
        with claim_output(tmp_path, "my_lora"):
            pass
    assert read_lock(lock)["pid"] == DEAD_PID


def test_half_written_lock_is_waited_for_then_taken_over(tmp_path):
    lock = lock_path(tmp_path, "my_lora")
    lock.write_bytes(b"")
    with pytest.raises(InstantLoraError, match="being trained by another run .it is just starting."):
        with claim_output(tmp_path, "my_lora"):
            pass
    os.utime(lock, (time.time() - 120, time.time() - 120))
    with claim_output(tmp_path, "my_lora"):
        assert read_lock(lock)["pid"] == os.getpid()


def test_lock_released_after_an_exception(tmp_path):
    with pytest.raises(RuntimeError):
        with claim_output(tmp_path, "my_lora"):
            raise RuntimeError("training failed")
    assert not lock_path(tmp_path, "my_lora").exists()
    with claim_output(tmp_path, "my_lora"):
        pass


def test_lock_held_by_another_process_then_killed(tmp_path):
    extension = Path(__file__).resolve().parents[1] / "extension"
    code = ("import sys, time; sys.path.insert(0, sys.argv[1]); from pathlib import Path\n"
            "from instant_lora.output_paths import claim_output\n"
            "with claim_output(Path(sys.argv[2]), 'my_lora'):\n    print('held', flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(extension), str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        assert pid_alive(proc.pid)
        with pytest.raises(InstantLoraError, match=f"pid {proc.pid} since"):
            with claim_output(tmp_path, "my_lora"):
                pass
    finally:
        proc.kill()
        proc.wait()
    assert not pid_alive(proc.pid)
    assert read_lock(lock_path(tmp_path, "my_lora"))["pid"] == proc.pid  # killed: its lock stayed behind
    with claim_output(tmp_path, "my_lora"):
        assert read_lock(lock_path(tmp_path, "my_lora"))["pid"] == os.getpid()


def test_pid_alive():
    assert pid_alive(os.getpid())
    assert not pid_alive(DEAD_PID)
    assert not pid_alive(0) and not pid_alive(-1)


# ---- 5. unwritable folders and full disks ---------------------------------------------------

def test_check_writable_creates_the_folder_and_leaves_nothing(tmp_path):
    folder = tmp_path / "a" / "b"
    check_writable(folder)
    assert folder.is_dir() and list(folder.iterdir()) == []


@pytest.fixture
def deny_creating_in(monkeypatch):
    """Creating files under a folder fails as in a folder without write permission (also as root)."""
    real_open = os.open

    def deny(folder: Path):
        def denied(path, flags, *a, **k):
            if str(path).startswith(str(folder)) and flags & os.O_CREAT:
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real_open(path, flags, *a, **k)

        monkeypatch.setattr(os, "open", denied)

    return deny


def test_check_writable_refuses_a_denied_folder(tmp_path, deny_creating_in):
    folder = tmp_path / "out"
    folder.mkdir()
    deny_creating_in(folder)
    with pytest.raises(InstantLoraError) as e:
        check_writable(folder)
    assert str(e.value).startswith(f"cannot write into {folder} (Permission denied)")
    assert "choose another output folder or fix its permissions" in str(e.value)
    assert list(folder.iterdir()) == []


def test_claim_in_a_denied_folder_says_what_to_do(tmp_path, deny_creating_in):
    deny_creating_in(tmp_path)
    with pytest.raises(InstantLoraError, match="cannot write .*my_lora.lock .permission denied"):
        with claim_output(tmp_path, "my_lora"):
            pass


def test_check_writable_read_only_folder_for_real(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("running as a user that can write anyway (root)")
        with pytest.raises(InstantLoraError, match="Permission denied"):
            check_writable(folder)
        with pytest.raises(InstantLoraError, match="cannot write into"):
            check_writable(folder / "sub")
    finally:
        folder.chmod(0o755)


def test_check_writable_a_file_in_the_way(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(InstantLoraError, match="is a file, not a folder"):
        check_writable(tmp_path / "f")


@pytest.fixture
def disk_fills_up(tmp_path, monkeypatch):
    """os.write into files under tmp_path writes `room` bytes, then fails with ENOSPC (as a full disk)."""
    real_open, real_write = os.open, os.write
    ours, room = set(), {"left": 100}

    def fake_open(path, flags, *a, **k):
        fd = real_open(path, flags, *a, **k)
        if str(path).startswith(str(tmp_path)):
            ours.add(fd)
        return fd

    def fake_write(fd, data):
        if fd not in ours:
            return real_write(fd, data)
        if room["left"] <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = real_write(fd, bytes(memoryview(data)[: room["left"]]))
        room["left"] -= n
        return n

    def fill():
        monkeypatch.setattr(os, "open", fake_open)
        monkeypatch.setattr(os, "write", fake_write)

    return fill


def test_disk_full_while_saving_the_lora_keeps_the_earlier_file(tmp_path, disk_fills_up):
    path = save_lora_file(tmp_path / "my_lora.safetensors", lora_sd(0.25), {"ss_output_name": "my_lora"})
    before = path.read_bytes()
    disk_fills_up()
    with pytest.raises(InstantLoraError) as e:
        save_lora_file(path, lora_sd(0.75), {"ss_output_name": "my_lora"})
    assert str(e.value).startswith(f"disk full while writing {path}")
    assert "free some space" in str(e.value) and "earlier saves are intact" in str(e.value)
    assert e.value.path == str(path)
    assert path.read_bytes() == before and float(read_lora_file(path)[0]["lora_unet_x.lora_down.weight"][0, 0]) == 0.25
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my_lora.safetensors"]  # no temp file left


def test_disk_full_while_saving_the_state_keeps_the_earlier_state(tmp_path, disk_fills_up):
    folder = write_state(tmp_path / "my_lora-state", 10)
    disk_fills_up()
    with pytest.raises(InstantLoraError, match="disk full while saving the training state"):
        write_state(folder, 20)
    assert load_state(folder, MATCH)["step"] == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my_lora-state"]
    assert sorted(p.name for p in folder.iterdir()) == sorted([STATE_FILE, INFO_FILE])


@pytest.mark.parametrize("code,words", [(errno.EROFS, "read-only"), (errno.EACCES, "permission denied"),
                                        (errno.ENAMETOOLONG, "too long")])
def test_rename_refused(tmp_path, monkeypatch, code, words):
    path = tmp_path / "my_lora.json"
    atomic_write_bytes(path, b"old")

    def refuse(src, dst):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(InstantLoraError, match=words):
        atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["my_lora.json"]


def test_other_os_errors_pass_through_and_clean_up(tmp_path, monkeypatch):
    def broken(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(OSError) as e:
        atomic_write_bytes(tmp_path / "x.json", b"data")
    assert not isinstance(e.value, InstantLoraError) and e.value.errno == errno.EIO
    assert list(tmp_path.iterdir()) == []


def test_state_rename_refused_puts_the_earlier_state_back(tmp_path, monkeypatch):
    folder = write_state(tmp_path / "my_lora-state", 10)
    real_rename = Path.rename

    def locked(self, target):
        if self.name.endswith("-state.tmp"):
            raise PermissionError(errno.EACCES, "Access is denied")  # e.g. another program holds it
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", locked)
    with pytest.raises(InstantLoraError, match="cannot write .*my_lora-state .permission denied"):
        write_state(folder, 20)
    monkeypatch.undo()
    assert load_state(folder, MATCH)["step"] == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my_lora-state"]
