"""Output and input files under stress: outputs that are not regular files (a FIFO, a device,
/dev/stdout), symbolic links, permission bits, temporary files a killed run left, a full disk,
SIGTERM/SIGHUP, two runs racing for one name; CSV input that is binary, huge or endless; and
P or sigma^2 too small to compute with, and JSON that stays JSON."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from aigxctl import allocation, checkpoint, data, files, scenarios, signals
from aigxctl.errors import UserError

GAINS = "g1,g2,g3\n1.0,2.0,3.0\n0.5,4.0,0.0\n0.01,0.02,7\n"
PROGRAM = Path(sys.executable).with_name("aigxctl")  # the console script, as users run it
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mknod, mount)")


def one_line(res, *fragments: str, code: int = 2) -> str:
    """The CLI exited with ``code`` after one error line holding every fragment, no traceback."""
    assert res.exit_code == code, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in res.output
    return lines[0]


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def dead_pid() -> int:
    """The pid of a process that has just exited (and was reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture
def gains_file(tmp_path: Path) -> Path:
    path = tmp_path / "g.csv"
    path.write_text(GAINS)
    return path


# --- outputs that are not regular files, links, permissions ----------------------------------


def test_fifo_is_written_in_place(run, gains_file, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    res = run("allocate", "--gains", gains_file, "--out", fifo)
    reader.join(10)
    assert res.exit_code == 0, res.output
    assert got[0].decode() == run("allocate", "--gains", gains_file).stdout
    assert stat.S_ISFIFO(fifo.lstat().st_mode)  # still the FIFO, not a file renamed over it
    assert names(tmp_path) == ["g.csv", "pipe"]


@ROOT_ONLY
def test_char_device_stays_a_device(run, gains_file, tmp_path):
    dev = tmp_path / "null"
    try:
        os.mknod(dev, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # a copy of /dev/null
    except PermissionError:
        pytest.skip("mknod is not permitted here")
    res = run("allocate", "--gains", gains_file, "--out", dev)
    assert res.exit_code == 0, res.output
    assert stat.S_ISCHR(dev.lstat().st_mode) and dev.lstat().st_rdev == os.makedev(1, 3)
    # a dataset streams into it too (a zip that needs no seeking back), with --force
    res = run("collect", "-s", "t1", "-n", "50", "-o", dev, "--force")
    assert res.exit_code == 0, res.output
    assert stat.S_ISCHR(dev.lstat().st_mode)
    assert names(tmp_path) == ["g.csv", "null"]


def test_dataset_through_a_fifo_is_a_valid_npz(run, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    copy = tmp_path / "copy.npz"
    reader = threading.Thread(target=lambda: copy.write_bytes(fifo.read_bytes()), daemon=True)
    reader.start()
    res = run("collect", "-s", "t1", "-n", "300", "-o", fifo, "--force")
    reader.join(10)
    assert res.exit_code == 0, res.output
    assert data.load(copy, check_optimal=True).n == 300


def test_symlink_is_kept_and_its_target_replaced(run, gains_file, tmp_path):
    elsewhere = tmp_path / "real"
    elsewhere.mkdir()
    target = elsewhere / "alloc.csv"
    target.write_text("old\n")
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    res = run("allocate", "--gains", gains_file, "--out", link)
    assert res.exit_code == 0, res.output
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_text() == run("allocate", "--gains", gains_file).stdout
    assert names(tmp_path) == ["g.csv", "link.csv", "real"]
    assert names(elsewhere) == ["alloc.csv"]  # the temporary file was beside the target


def test_replaced_file_keeps_its_permissions_and_a_new_one_gets_the_umask(run, gains_file,
                                                                          tmp_path):  # fmt: skip
    secret = tmp_path / "secret.csv"
    secret.write_text("old\n")
    secret.chmod(0o600)
    res = run("allocate", "--gains", gains_file, "--out", secret)
    assert res.exit_code == 0, res.output
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert secret.read_text().startswith("p1,")
    old = os.umask(0o027)
    try:
        res = run("allocate", "--gains", gains_file, "--out", tmp_path / "new.csv")
    finally:
        os.umask(old)
    assert res.exit_code == 0, res.output
    assert stat.S_IMODE((tmp_path / "new.csv").stat().st_mode) == 0o640


def test_dev_fd_output_appends_to_what_the_shell_opened(gains_file, tmp_path):
    # `aigxctl allocate -o /dev/fd/1 >> log`: the log's earlier lines must survive (reopening
    # the name would truncate it), and the output lands after them.
    log = tmp_path / "log.txt"
    log.write_text("earlier line\n")
    with log.open("ab") as out:
        res = subprocess.run([PROGRAM, "allocate", "-g", gains_file, "-o", "/dev/fd/1"],
                             stdout=out, stderr=subprocess.PIPE, text=True, timeout=60)  # fmt: skip
    assert res.returncode == 0, res.stderr
    text = log.read_text()
    assert text.startswith("earlier line\np1,p2,p3,sum_rate\n") and text.count("p1,") == 1


# --- temporary files a killed run left -------------------------------------------------------


def test_stale_temp_files_of_the_same_target_are_removed(run, gains_file, tmp_path):
    gone = dead_pid()
    stale = tmp_path / f".out.csv.{gone}.0123abcd.tmp"
    keep = [
        tmp_path / f".out.csv.{os.getpid()}.0123abcd.tmp",  # its writer is alive
        tmp_path / f".other.csv.{gone}.0123abcd.tmp",  # another target's
        tmp_path / f".out.csv.{gone}.tmp",  # not a name aigxctl makes
        tmp_path / f".out.csv.{gone}.0123ABCD.tmp",
        tmp_path / f"out.csv.{gone}.0123abcd.tmp",
        tmp_path / f".out.csv.{gone}.0123abcd.tmp.bak",
    ]
    for path in [stale, *keep]:
        path.write_text("x")
    res = run("allocate", "--gains", gains_file, "--out", tmp_path / "out.csv")
    assert res.exit_code == 0, res.output
    assert not stale.exists()
    assert all(p.read_text() == "x" for p in keep)
    assert names(tmp_path) == sorted(["g.csv", "out.csv", *(p.name for p in keep)])


def test_temp_names_carry_the_pid(tmp_path):
    with files.atomic_path(tmp_path / "a.npz") as tmp:
        assert files.temp_name_pattern("a.npz").fullmatch(tmp.name)
        assert tmp.name.startswith(f".a.npz.{os.getpid()}.")


# --- write errors: one line naming the file, the old file intact, nothing left behind ---------


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_write_error_in_atomic_write_text(tmp_path, monkeypatch):
    out = tmp_path / "out.txt"
    out.write_text("precious\n")
    monkeypatch.setattr(Path, "write_text", enospc)
    with pytest.raises(UserError) as info:
        files.atomic_write_text(out, "new")
    assert str(info.value) == f"{out}: cannot write (No space left on device)"
    monkeypatch.undo()
    assert out.read_text() == "precious\n" and names(tmp_path) == ["out.txt"]


def test_write_error_in_allocate_out(run, gains_file, tmp_path, monkeypatch):
    out = tmp_path / "out.csv"
    out.write_text("precious\n")

    def half_then_fail(self, text, **kwargs):
        with self.open("w") as f:
            f.write(text[:10])
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(Path, "write_text", half_then_fail)
    one_line(run("allocate", "-g", gains_file, "-o", out), f"{out}: cannot write (Input/output")
    assert out.read_text() == "precious\n" and names(tmp_path) == ["g.csv", "out.csv"]


def fail_after(n: int, code: int):
    """A replacement that works ``n`` times, then raises OSError(code)."""
    calls = {"n": 0}

    def fail(real):
        def wrapped(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] > n:
                raise OSError(code, os.strerror(code))
            return real(*args, **kwargs)

        return wrapped

    return fail


@pytest.mark.parametrize(
    ("where", "code", "fmt"),
    [
        ("writer thread", errno.ENOSPC, "npz"),  # raised in the helper thread, via its future
        ("temporary file", errno.EROFS, "npz"),  # tempfile.TemporaryFile for power/sum rate
        ("copy", errno.EIO, "npz"),  # appending the temporary files to the zip
        ("csv", errno.EDQUOT, "csv"),
        ("csv", errno.EFBIG, "csv"),
    ],
)
def test_write_errors_in_collect(run, tmp_path, monkeypatch, where, code, fmt):
    out = tmp_path / f"out.{fmt}"
    out.write_text("precious\n")
    if where == "writer thread":
        monkeypatch.setattr(data, "_raw", fail_after(1, code)(data._raw))
    elif where == "temporary file":
        monkeypatch.setattr(data.tempfile, "TemporaryFile", fail_after(1, code)(
            data.tempfile.TemporaryFile))  # fmt: skip
    elif where == "copy":
        monkeypatch.setattr(data.shutil, "copyfileobj", fail_after(0, code)(shutil.copyfileobj))
    else:
        monkeypatch.setattr(data.np, "savetxt", fail_after(0, code)(np.savetxt))
    res = run("collect", "-s", "t1", "-n", "20000", "-o", out, "--force")
    one_line(res, f"{out}: cannot write ({os.strerror(code)})")
    assert out.read_text() == "precious\n" and names(tmp_path) == [out.name]


@pytest.fixture
def full_disk(tmp_path: Path):
    """A 256 KiB tmpfs mounted on a fresh folder (root only; skipped where mounting fails)."""
    folder = tmp_path / "small"
    folder.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root and mount(8)")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", folder],
                         capture_output=True, text=True)  # fmt: skip
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield folder
    finally:
        if subprocess.run(["umount", folder], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", folder], capture_output=True)


def test_a_really_full_disk(run, tmp_path, full_disk):
    g = tmp_path / "big.csv"
    np.savetxt(g, np.random.default_rng(0).uniform(1, 7, (3000, 20)), delimiter=",")
    for name, args in [
        ("alloc.csv", ["allocate", "-g", g]),
        ("t1.npz", ["collect", "-s", "t1", "-n", "5000", "--force"]),
        ("t1.csv", ["collect", "-s", "t1", "-n", "5000", "--force"]),
    ]:
        out = full_disk / name
        out.write_text("precious\n")
        one_line(run(*args, "-o", out), f"{out}: cannot write (No space left on device)")
        assert out.read_text() == "precious\n"
        assert names(full_disk) == [name]
        out.unlink()


def test_stdout_on_a_full_device():
    if not Path("/dev/full").exists() or not PROGRAM.exists():
        pytest.skip("needs /dev/full and the installed aigxctl script")
    for args in (["-g", "-"], ["-g", "-", "-o", "/dev/stdout"]):
        with open("/dev/full", "w") as full:
            res = subprocess.run([PROGRAM, "allocate", *args], input=GAINS, stdout=full,
                                 stderr=subprocess.PIPE, text=True, timeout=60)  # fmt: skip
        assert res.returncode == 2, res.stderr
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and "cannot write (No space left on device)" in lines[0], lines
        assert "Traceback" not in res.stderr and "Exception ignored" not in res.stderr


# --- SIGTERM and SIGHUP are Ctrl-C -------------------------------------------------------------


def default_signals() -> None:
    # In the child: SIGTERM and SIGHUP as a shell gives them, even under a runner that
    # ignores SIGHUP (nohup), which the program would rightly keep ignoring.
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, signal.SIG_DFL)


def wait_until(check, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            raise AssertionError("timed out")
        time.sleep(0.01)


def catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has installed a handler for ``signum`` (from /proc)."""
    status = Path(f"/proc/{pid}/status").read_text()
    mask = int(next(ln for ln in status.splitlines() if ln.startswith("SigCgt:")).split()[1], 16)
    return bool(mask >> (signum - 1) & 1)


def test_sigterm_during_collect_removes_the_temporary_file(tmp_path):
    out = tmp_path / "X.npz"
    proc = subprocess.Popen(
        [PROGRAM, "collect", "--scenario", "t1", "--samples", "30000000", "--out", out],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_signals,
    )  # fmt: skip
    try:
        wait_until(lambda: any(tmp_path.glob(".X.npz.*")) or proc.poll() is not None)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert names(tmp_path) == []
    assert "Traceback" not in err and err.strip().splitlines() == ["Error: interrupted (SIGTERM)"]


def test_sighup_during_allocate(tmp_path):
    out = tmp_path / "out.csv"
    proc = subprocess.Popen([PROGRAM, "allocate", "-g", "-", "-o", out], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_signals)  # fmt: skip
    try:
        proc.stdin.write("1,2\n")  # then it waits for the rest of stdin
        proc.stdin.flush()
        wait_until(lambda: catches(proc.pid, signal.SIGHUP))
        proc.send_signal(signal.SIGHUP)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 128 + signal.SIGHUP, err
    assert "Traceback" not in err and err.strip().splitlines() == ["Error: interrupted (SIGHUP)"]
    assert names(tmp_path) == []


@pytest.fixture
def harmless_handlers():
    """SIGTERM and SIGHUP handled by a no-op while a test sends them to itself (so a failing
    test cannot stop the test run), put back afterwards."""

    def ignore(signum, frame):
        pass

    old = {s: signal.signal(s, ignore) for s in (signal.SIGTERM, signal.SIGHUP)}
    yield ignore
    for s, handler in old.items():
        signal.signal(s, handler)


def test_as_interrupt_raises_once_then_restores(harmless_handlers):
    with pytest.raises(signals.Interrupted) as info, signals.as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # cut short by the signal
    assert info.value.signum == signal.SIGTERM and isinstance(info.value, KeyboardInterrupt)
    assert signals.exit_code(info.value) == 143 and signals.exit_code(KeyboardInterrupt()) == 130
    assert signal.getsignal(signal.SIGTERM) is harmless_handlers
    with pytest.raises(signals.Interrupted) as info, signals.as_interrupt():
        os.kill(os.getpid(), signal.SIGHUP)
        time.sleep(5)
    assert signals.exit_code(info.value) == 129
    assert signal.getsignal(signal.SIGHUP) is harmless_handlers
    cleaned = False
    with contextlib.suppress(signals.Interrupted), signals.as_interrupt():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        except signals.Interrupted:
            os.kill(os.getpid(), signal.SIGTERM)  # a second one during cleanup: ignored
            time.sleep(0.05)
            cleaned = True
    assert cleaned


def test_as_interrupt_leaves_an_ignored_sighup_ignored():
    old = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup
    try:
        with signals.as_interrupt():
            assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN)
    finally:
        signal.signal(signal.SIGHUP, old)


def test_as_interrupt_does_nothing_outside_the_main_thread():
    seen = []

    def body() -> None:
        with signals.as_interrupt():
            seen.append(signal.getsignal(signal.SIGTERM))

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert seen == [signal.getsignal(signal.SIGTERM)]


# --- two runs, one new name ------------------------------------------------------------------


def test_collect_does_not_replace_a_file_that_appeared_meanwhile(tmp_path):
    out = tmp_path / "t1.npz"

    def other_run_finishes(done: int) -> None:
        if not out.exists():
            out.write_text("the other run's dataset\n")

    with pytest.raises(files.TargetExists):
        data.collect_to_file(scenarios.get("t1"), 200, 0, out, overwrite=False, chunk=50,
                             progress=other_run_finishes)  # fmt: skip
    assert out.read_text() == "the other run's dataset\n" and names(tmp_path) == ["t1.npz"]


def test_cli_collect_race_without_force(run, tmp_path, monkeypatch):
    out = tmp_path / "t1.npz"
    real = data._write_npz

    def other_run_first(target, *args):
        out.write_text("the other run's dataset\n")  # after this run checked out.exists()
        real(target, *args)

    monkeypatch.setattr(data, "_write_npz", other_run_first)
    one_line(run("collect", "-s", "t1", "-n", "50", "-o", out), f"{out} exists; pass --force")
    assert out.read_text() == "the other run's dataset\n" and names(tmp_path) == ["t1.npz"]
    res = run("collect", "-s", "t1", "-n", "50", "-o", out, "--force")
    assert res.exit_code == 0, res.output
    assert data.load(out).n == 50


def test_atomic_path_without_replace(tmp_path):
    out = tmp_path / "a.txt"
    files.atomic_write_text(out, "one", replace=False)
    with pytest.raises(files.TargetExists):
        files.atomic_write_text(out, "two", replace=False)
    assert out.read_text() == "one" and names(tmp_path) == ["a.txt"]


# --- CSV input: bounded, streamed ------------------------------------------------------------


def test_dev_zero_is_refused_quickly():
    # In a fresh process with its memory capped: before, it read until the memory ran out.
    code = (
        "import resource; resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30));"
        "from aigxctl.cli import main; main()"
    )
    start = time.monotonic()
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}  # small VM
    res = subprocess.run([sys.executable, "-c", code, "allocate", "--gains", "/dev/zero"],
                         capture_output=True, text=True, timeout=60, env=env)  # fmt: skip
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines() == [
        "Error: /dev/zero: not a text CSV file (line 1 holds NUL bytes)"
    ]
    assert time.monotonic() - start < 10


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (b"1,2\n" + b"3," * (1 << 19) + b"4\n", "line 2 is longer than the limit of 1 MiB"),
        (b"1,2\n\x00\x00", "not a text CSV file (line 2 holds NUL bytes)"),
        (b"1,2\n3,\xff\n", "not a text CSV file (line 2 is not UTF-8)"),
        (b"1,2\r3,4\n", "line 1: not a valid CSV row"),  # a lone CR ends no line
        (b'1,"' + b"9" * 200_000 + b'"\n', "line 1: not a valid CSV row (field larger"),
        # An open quote is named where it opens, not where the reader gave up, nor read to the
        # file's end as one field (a lone '"1,2' was taken for a header).
        (b'1,2\n5,"6\n7,8\n9,10\n', "line 2: not a valid CSV row (unexpected end of data)"),
        (b'"1,2\n', "line 1: not a valid CSV row (unexpected end of data)"),
        (b'1,2\n5,"6\n7",8\n', "row 2: a quote opened on this line is not closed on it"),
    ],
)
def test_bad_csv_is_one_line(run, write, text, fragment):
    path = write("bad.csv", text)
    one_line(run("allocate", "--gains", path), str(path), fragment)


def test_limits_are_named_and_enforced(run, write, monkeypatch):
    monkeypatch.setattr(files, "MAX_COLUMNS", 3)
    one_line(run("allocate", "-g", write("wide.csv", "1,2,3,4\n")),
             "row 1 has 4 columns, more than the limit of 3")  # fmt: skip
    monkeypatch.setattr(files, "MAX_VALUES", 5)
    one_line(run("allocate", "-g", write("long.csv", "1,2\n3,4\n5,6\n")),
             "more than the limit of 5 numbers", "at row 3")  # fmt: skip
    monkeypatch.setattr(files, "MAX_LINE_BYTES", 64)
    # a row that quotes spread over many short lines is bounded too
    spread = '1,"' + "2\n" * 40 + '"\n'
    one_line(run("allocate", "-g", write("spread.csv", spread)), "longer than the limit")


def test_blocks_join_up_in_order(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "_BLOCK_VALUES", 7)  # many partial blocks of 2 rows x 3
    g = np.random.default_rng(1).uniform(0, 9, (101, 3))
    path = tmp_path / "g.csv"
    path.write_text("a,b,c\n\n" + "\n".join(",".join(map(str, row.tolist())) for row in g))
    np.testing.assert_array_equal(files.read_matrix_csv(path), g)
    g[50, 1] = -1.0
    path.write_text("g1,g2,g3\n\n" + "\n".join(",".join(map(str, row.tolist())) for row in g))
    with pytest.raises(UserError, match="row 53, column 2"):  # file lines: header, blank
        files.read_gains_csv(path)


@pytest.mark.slow
def test_a_20_mb_csv_is_read_in_about_its_own_size(tmp_path):
    row = ",".join(["1.5"] * 20) + "\n"
    path = tmp_path / "big.csv"
    path.write_text(row * (20_000_000 // len(row)))
    size = path.stat().st_size
    code = (
        "import resource, sys\n"
        "from aigxctl import files\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "a = files.read_matrix_csv(sys.argv[1])\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(a.shape[0], a.shape[1], float(a.sum()), (after - before) * 1024)\n"
    )
    res = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    assert res.returncode == 0, res.stderr
    rows, cols, total, grown = res.stdout.split()
    assert (int(rows), int(cols)) == (size // len(row), 20)
    assert float(total) == 1.5 * 20 * int(rows)
    # float64 is 8 bytes for each 4-byte "1.5,": ~2x the file; it used to be ~16x.
    assert int(grown) < 4 * size, f"peak grew by {int(grown) / size:.1f}x the file size"


def test_stdin_is_named_stdin_in_the_model_mismatch(run, monkeypatch):
    model = SimpleNamespace(m=5, total_power=0.2, noise=1.0)
    monkeypatch.setattr(checkpoint, "load_model", lambda path, **_: model)
    res = run("allocate", "-g", "-", "-m", "gdm", "--model", "m", input="1,2,3\n")
    one_line(res, "<stdin>: rows have 3 gains but the model m was trained for M = 5")


# --- P and sigma^2 that can be computed with; JSON that is JSON ------------------------------


@pytest.mark.parametrize("args", [["-P", "1e-320"], ["--noise", "4e-310"]])
def test_subnormal_power_or_noise_is_refused(run, gains_file, args):
    name = "--total-power" if args[0] == "-P" else args[0]
    one_line(run("allocate", "-g", gains_file, *args), name, "normal float")


def test_collect_refuses_a_subnormal_power_and_writes_nothing(run, tmp_path):
    out = tmp_path / "x.npz"
    one_line(run("collect", "-s", "t1", "-n", "10", "-o", out, "-P", "1e-320"),
             "--total-power", "normal float")  # fmt: skip
    with pytest.raises(UserError, match=r"total power must be a finite number >= 2\.225e-308"):
        data.collect_to_file(scenarios.get("t1"), 10, 0, out, total_power=1e-320)
    assert names(tmp_path) == []


def test_collect_with_a_tiny_power_does_not_crash(run, tmp_path):
    out = tmp_path / "x.npz"
    res = run("collect", "-s", "t1", "-n", "10", "-o", out, "-P", "1e-20")
    assert res.exit_code == 0, res.output  # every rate rounds to 0: no ratio to divide by
    assert "10 samples" in res.stderr and "over equal" not in res.stderr
    assert data.load(out).total_power == 1e-20


def strict_json(text: str):
    def refuse(name: str):
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def test_json_output_has_no_infinity_or_nan(run):
    res = run("allocate", "-g", "-", "-P", "1e300", "-f", "json", input="1e308,1e308\n2,3\n")
    assert res.exit_code == 0, res.output
    doc = strict_json(res.stdout)
    assert doc["sum_rate"][0] is None and doc["sum_rate"][1] > 0
    assert doc["allocations"][0] == [5e299, 5e299]
    result = allocation.Allocation("gdm", float("inf"), 1.0, np.array([[np.nan, 1.0]]),
                                   np.array([np.inf]), 0.0)  # fmt: skip
    assert strict_json(allocation.to_json(result)) == {
        "method": "gdm", "total_power": None, "noise": 1.0, "allocations": [[None, 1.0]],
        "sum_rate": [None],
    }  # fmt: skip


# --- a header says which column is which gain -------------------------------------------------


def test_header_gain_columns_are_taken_by_their_numbers(tmp_path):
    path = tmp_path / "swap.csv"
    path.write_text("g2,sum_rate,g1\n1,0,100\n3,0,4\n")
    np.testing.assert_array_equal(files.read_gains_csv(path), [[100, 1], [4, 3]])
    res = allocation.run(path, "waterfill")
    assert res.power[0, 0] > res.power[0, 1]  # the strong channel, g1, gets the power


@pytest.mark.parametrize("header", ["g1,g1", "g1,g3", "g0,g1"])
def test_header_gain_columns_must_be_g1_to_gm_once(tmp_path, header):
    path = tmp_path / "bad.csv"
    path.write_text(f"{header}\n1,2\n")
    with pytest.raises(UserError, match=r"bad\.csv: the header's gain columns must be g1\.\.g2"):
        files.read_gains_csv(path)


def test_a_gain_beyond_float32_is_named_in_the_file_for_a_model(run, tmp_path, monkeypatch):
    # Water-filling takes it (float64); a model computes in float32, so the CLI names the cell.
    path = tmp_path / "huge.csv"
    path.write_text("1,2\n3,1e39\n")
    assert run("allocate", "-g", str(path)).exit_code == 0
    model = SimpleNamespace(m=2, total_power=0.2, noise=1.0)
    monkeypatch.setattr(checkpoint, "load_model", lambda path, **_: model)
    res = run("allocate", "-g", str(path), "-m", "gdm", "--model", "m")
    one_line(res, "huge.csv: row 2, column 2: 1e+39", "float32")
