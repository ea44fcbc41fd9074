"""What `train` and `cycle` promise about the user's files and about interruptions: an output
directory is replaced only when it is aigxctl's own checkpoint and --force says so, the swap
never loses the old checkpoint, a signal at any moment saves a checkpoint that resumes to the
very same weights, and damaged checkpoints or resume states are refused in one line."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from aigxctl import checkpoint, data, scenarios
from aigxctl.checkpoint import load_model
from aigxctl.cycle import CycleConfig, run_cycle
from aigxctl.errors import UserError
from aigxctl.train import TrainConfig, TrainingInterrupted, train

TINY = {"hidden": 16, "batch": 64, "val_every": 20, "val_samples": 100}


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def cfg(dataset: Path, out: Path, **kw) -> TrainConfig:
    return TrainConfig(data=[str(dataset)], out=str(out), **{"steps": 5, **TINY, **kw})


def weights(path: Path) -> list[torch.Tensor]:
    return [p.detach().clone() for p in load_model(path).denoiser.parameters()]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# ---- the output directory ---------------------------------------------------------------------


@pytest.mark.parametrize("where", [".", ".."])
def test_out_naming_the_working_directory_or_above_is_refused(run, dataset, tmp_path, where,
                                                              monkeypatch):  # fmt: skip
    project = tmp_path / "proj" / "sub"
    project.mkdir(parents=True)
    (project / "notes.txt").write_text("mine")
    (project.parent / "paper.tex").write_text("mine too")
    monkeypatch.chdir(project)
    before = snapshot(tmp_path)
    res = run("train", "--data", dataset, "--out", where, "--steps", "3", "--hidden", "16",
              "--force")  # fmt: skip
    assert res.exit_code == 2
    assert "current directory" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert snapshot(tmp_path) == before


def test_existing_checkpoint_needs_force_and_is_replaced_whole(run, dataset, tmp_path):
    out = tmp_path / "m"
    args = ["train", "--data", dataset, "--out", out, "--steps", "3", "--hidden", "16"]
    assert run(*args).exit_code == 0
    old = snapshot(out)
    res = run(*args, "--seed", "7")
    assert res.exit_code == 2 and "pass --force" in res.stderr
    assert snapshot(out) == old
    res = run(*args, "--seed", "7", "--force")
    assert res.exit_code == 0, res.stderr
    assert snapshot(out)["model.safetensors"] != old["model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no staging or old copy left


def test_force_never_replaces_a_directory_with_foreign_files(run, dataset, tmp_path):
    out = tmp_path / "m"
    train(cfg(dataset, out))
    (out / "notes.md").write_text("my notes")
    (out / "tensorboard").mkdir()
    (out / "tensorboard" / "my-plot.png").write_bytes(b"png")
    before = snapshot(out)
    res = run("train", "--data", dataset, "--out", out, "--steps", "3", "--force")
    assert res.exit_code == 2
    assert "notes.md" in res.stderr and "tensorboard/my-plot.png" in res.stderr
    assert snapshot(out) == before
    other = tmp_path / "data-dir"
    other.mkdir()
    (other / "config.json").write_text('{"format": "not ours"}')
    res = run("train", "--data", dataset, "--out", other, "--steps", "3", "--force")
    assert res.exit_code == 2 and "config.json" in res.stderr


def test_out_that_is_a_file_or_under_a_file_is_one_line(run, dataset, tmp_path):
    f = tmp_path / "f"
    f.write_text("keep")
    for out in (f, f / "m"):
        res = run("train", "--data", dataset, "--out", out, "--steps", "3")
        assert res.exit_code == 2 and "Traceback" not in res.output
        assert len(res.stderr.strip().splitlines()) == 1
    assert f.read_text() == "keep"


def test_symlinked_out_writes_the_target_and_keeps_the_link(dataset, tmp_path):
    real = tmp_path / "real"
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    real.mkdir()
    train(cfg(dataset, link))
    train(cfg(dataset, link, seed=3, force=True))
    assert link.is_symlink() and (real / "model.safetensors").is_file()
    assert load_model(link).m == 20


def test_leftovers_are_kept_unless_they_are_aigxctls_stale_staging(dataset, tmp_path):
    out = tmp_path / "m"
    old_style = tmp_path / ".m.old"
    old_style.mkdir()
    (old_style / "notes.txt").write_text("not aigxctl's to delete")
    dead = 2**22 + 12345  # above Linux's default pid_max: no process has it
    stale = tmp_path / f".m.{dead}.0123abcd.tmp"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    mixed = tmp_path / f".m.{dead}.4567abcd.tmp"
    mixed.mkdir()
    (mixed / "config.json").write_text("{}")
    (mixed / "mine.txt").write_text("user file")
    train(cfg(dataset, out))
    assert (old_style / "notes.txt").read_text() == "not aigxctl's to delete"
    assert not stale.exists()
    assert sorted(p.name for p in mixed.iterdir()) == ["mine.txt"]


def test_a_failed_final_save_keeps_the_old_checkpoint_and_rescues_the_weights(
    dataset, tmp_path, monkeypatch
):
    out = tmp_path / "m"
    train(cfg(dataset, out))
    old = snapshot(out)
    real_write = checkpoint._write

    def full_disk(path: Path, blob: bytes, mode: int) -> None:
        if tmp_path in path.parents:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real_write(path, blob, mode)

    monkeypatch.setattr(checkpoint, "_write", full_disk)
    with pytest.raises(UserError, match="No space left on device") as info:
        train(cfg(dataset, out, seed=9, force=True))
    message = str(info.value)
    assert "saved to" in message
    rescued = Path(message.split("saved to ")[1].split(" instead")[0])
    assert load_model(rescued).m == 20
    assert snapshot(out) == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_cycle_refuses_an_existing_run_without_force_and_foreign_files_with_it(tmp_path):
    tiny = CycleConfig(samples=200, t1_steps=4, t3_steps=2, eval_samples=50, hidden=8,
                       val_every=2, sac=False, mlp=False)  # fmt: skip
    out = tmp_path / "run"
    run_cycle(tiny, out)
    with pytest.raises(UserError, match="pass --force"):
        run_cycle(tiny, out)
    run_cycle(tiny, out, force=True)
    (out / "mine.txt").write_text("x")
    with pytest.raises(UserError, match=r"mine\.txt"):
        run_cycle(tiny, out, force=True)


# ---- interrupts ---------------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import sys, torch
    from aigxctl.train import TrainConfig, train
    torch.set_num_threads(1)
    cfg = TrainConfig(data=[sys.argv[1]], out=sys.argv[2], steps=int(sys.argv[3]),
                      resume=sys.argv[4] == "1", hidden=16, batch=64, val_every=20,
                      val_samples=100)
    def progress(step, metrics):
        print(step, flush=True)
    try:
        train(cfg, progress)
    except KeyboardInterrupt as exc:
        print("stopped", getattr(exc, "step", None), getattr(exc, "checkpoint", None), flush=True)
        sys.exit(128 + getattr(exc, "signum", 2))
    """
)


def child(dataset: Path, out: Path, steps: int, resume: bool) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(dataset), str(out), str(steps), "1" if resume else "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


@pytest.mark.slow
def test_a_real_signal_at_any_moment_then_resume_gives_the_same_weights(dataset, tmp_path):
    steps = 160
    straight = tmp_path / "straight"
    train(cfg(dataset, straight, steps=steps))
    rng = np.random.default_rng(0)
    cases = [(signal.SIGINT, 7), (signal.SIGTERM, 41), (signal.SIGHUP, 95)]
    for i, (sig, after) in enumerate(cases):
        out = tmp_path / f"broken{i}"
        proc = child(dataset, out, steps, resume=False)
        for line in proc.stdout:
            if line.strip().isdigit() and int(line) >= after:
                break
        time.sleep(float(rng.uniform(0, 0.004)))  # lands anywhere inside a step
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 128 + sig, stderr
        assert "Traceback" not in stderr
        stopped_at = json.loads((out / "resume.json").read_text())["step"]
        assert after <= stopped_at < steps
        cfg_doc = json.loads((out / "config.json").read_text())
        assert cfg_doc["progress"] == {"steps_done": stopped_at, "steps_planned": steps,
                                       "complete": False}  # fmt: skip
        resumed = child(dataset, out, steps, resume=True)
        resumed.communicate(timeout=60)
        assert resumed.returncode == 0
        for x, y in zip(weights(straight), weights(out), strict=True):
            assert torch.equal(x, y), f"{sig.name} after step {after}: not bit-identical"


def test_a_signal_before_the_first_step_saves_nothing_and_says_so(dataset, tmp_path, monkeypatch):
    import aigxctl.train as train_mod

    real = train_mod._new_model

    def signal_then_build(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "_new_model", signal_then_build)
    out = tmp_path / "m"
    with pytest.raises(TrainingInterrupted) as info:
        train(cfg(dataset, out, steps=50))
    assert info.value.checkpoint is None and info.value.step == 0
    assert info.value.signum == signal.SIGTERM
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_cli_interrupt_message_tells_whether_a_checkpoint_was_saved(run, dataset, tmp_path,
                                                                    monkeypatch):  # fmt: skip
    import aigxctl.train as train_mod

    real = train_mod._new_model
    monkeypatch.setattr(train_mod, "_new_model",
                        lambda *a, **k: (os.kill(os.getpid(), signal.SIGHUP), real(*a, **k))[1])
    res = run("train", "--data", dataset, "--out", tmp_path / "m", "--steps", "9", "--hidden", "8")
    assert res.exit_code == 128 + signal.SIGHUP
    assert "SIGHUP" in res.stderr and "nothing was written" in res.stderr
    assert "resumable" not in res.stderr


@pytest.mark.slow
def test_sigterm_to_the_ddp_parent_stops_the_workers_and_saves(dataset, tmp_path):
    out = tmp_path / "ddp"
    exe = Path(sys.executable).with_name("aigxctl")
    proc = subprocess.Popen(
        [str(exe), "train", "--data", str(dataset), "--out", str(out), "--steps", "100000",
         "--hidden", "16", "--batch", "64", "--nproc", "2", "--val-every", "50"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".ddp.*.tmp")):  # rank 0 is in its training loop
        assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
        time.sleep(0.1)
    time.sleep(1.0)
    workers = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()
               and _ppid(p) == proc.pid and b"spawn_main" in _cmdline(p)
               and b"resource_tracker" not in _cmdline(p)]  # fmt: skip
    assert len(workers) == 2
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "resumable checkpoint" in stderr and "Traceback" not in stderr
    assert json.loads((out / "resume.json").read_text())["step"] > 0
    time.sleep(0.5)
    assert not [w for w in workers if b"spawn_main" in _cmdline(Path(f"/proc/{w}"))]


def _cmdline(proc_dir: Path) -> bytes:
    try:
        return (proc_dir / "cmdline").read_bytes()
    except OSError:
        return b""


def _ppid(proc_dir: Path) -> int:
    try:
        return int((proc_dir / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def test_a_user_error_in_ddp_is_one_line(run, tmp_path):
    res = run("train", "--data", tmp_path / "nope.npz", "--out", tmp_path / "m", "--nproc", "2")
    assert res.exit_code == 2 and "nope.npz" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


# ---- damaged checkpoints and resume states ------------------------------------------------------


@pytest.fixture
def model_dir(dataset, tmp_path) -> Path:
    out = tmp_path / "m"
    train(cfg(dataset, out))
    return out


def edit_config(path: Path, **changes) -> None:
    doc = json.loads((path / "config.json").read_text())
    doc.update(changes)
    (path / "config.json").write_text(json.dumps(doc))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"hidden": -4}, "hidden"),
        ({"t_dim": -16}, "t_dim"),
        ({"t_dim": 7}, "t_dim"),
        ({"best_of": "x"}, "best_of"),
        ({"best_of": 10**9}, "best_of"),
        ({"steps": 10**9}, "steps"),
        ({"m": 10**9}, "m must"),
        ({"version": 99}, "newer than this aigxctl"),
        ({"cond_std": [float("inf")] * 20}, "cond_std"),
        ({"noise": 0}, "noise"),
        ({"weights_sha256": None}, "weights_sha256"),
    ],
)
def test_a_damaged_config_is_refused_in_one_line(model_dir, changes, message):
    edit_config(model_dir, **changes)
    with pytest.raises(UserError, match=message):
        load_model(model_dir)


def test_config_json_that_is_a_directory_fifo_or_bomb_is_refused(model_dir):
    cfg_path = model_dir / "config.json"
    cfg_path.unlink()
    cfg_path.mkdir()
    with pytest.raises(UserError, match="not a regular file"):
        load_model(model_dir)
    cfg_path.rmdir()
    os.mkfifo(cfg_path)  # reading it would block forever
    with pytest.raises(UserError, match="not a regular file"):
        load_model(model_dir)
    cfg_path.unlink()
    cfg_path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(UserError, match="damaged"):
        load_model(model_dir)


def test_weights_are_checked_against_the_checksum_dtype_and_finiteness(model_dir):
    from safetensors.torch import load_file, save_file

    w = model_dir / "model.safetensors"
    blob = bytearray(w.read_bytes())
    blob[-3] ^= 0x01  # one flipped bit in a weight
    w.write_bytes(bytes(blob))
    with pytest.raises(UserError, match="checksum"):
        load_model(model_dir)
    blob[-3] ^= 0x01
    w.write_bytes(bytes(blob))
    load_model(model_dir)
    state = load_file(str(w))
    for change, message in (("nan", "NaN"), ("int", "int32")):
        bad = dict(state)
        key = next(iter(bad))
        bad[key] = (torch.full_like(bad[key], float("nan")) if change == "nan"
                    else bad[key].to(torch.int32))  # fmt: skip
        save_file(bad, str(w))
        edit_config(model_dir, weights_sha256=__import__("hashlib").sha256(w.read_bytes())
                    .hexdigest())  # fmt: skip
        with pytest.raises(UserError, match=message):
            load_model(model_dir)


@pytest.fixture
def interrupted(dataset, tmp_path) -> Path:
    out = tmp_path / "r"

    def stop(step, _m):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg(dataset, out, steps=10), stop)
    return out


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "resume.json").write_text("{bad"), "not valid JSON"),
        (lambda d: (d / "resume.json").write_text("{}"), "no valid step"),
        (lambda d: (d / "resume.json").write_text('{"step": 1e9}'), "no valid step"),
        (lambda d: (d / "resume.json").write_text('{"step": 1000000000}'),
         "not within|does not match"),
        (lambda d: (d / "resume.safetensors").write_bytes(
            (d / "resume.safetensors").read_bytes()[:-1]
            + bytes([(d / "resume.safetensors").read_bytes()[-1] ^ 1])), "checksum"),
        (lambda d: (d / "resume.safetensors").unlink(), "missing"),
        (lambda d: (d / "resume.safetensors").write_bytes(
            (d / "resume.safetensors").read_bytes()[:100]), "damaged"),
    ],
)
def test_damaged_resume_state_is_refused_in_one_line(dataset, interrupted, damage, message):
    damage(interrupted)
    with pytest.raises(UserError, match=message):
        train(cfg(dataset, interrupted, steps=10, resume=True))


def test_resume_state_without_rng_is_refused(dataset, interrupted):
    from safetensors.torch import load_file, save_file

    path = interrupted / "resume.safetensors"
    state = load_file(str(path))
    del state["rng"]
    save_file(state, str(path))
    # Past the checksum (else that catches it first): the state as an older aigxctl wrote it.
    info = {"step": json.loads((interrupted / "resume.json").read_text())["step"]}
    (interrupted / "resume.json").write_text(json.dumps(info))
    edit_config(interrupted, resume=info)
    with pytest.raises(UserError, match="random-generator"):
        train(cfg(dataset, interrupted, steps=10, resume=True))


def test_resume_refuses_other_data_or_settings(dataset, interrupted, tmp_path):
    other = tmp_path / "t2.npz"
    data.collect_to_file(scenarios.get("t2"), 600, 1, other)
    with pytest.raises(UserError, match="other data"):
        train(cfg(other, interrupted, steps=10, resume=True))
    with pytest.raises(UserError, match="arch"):
        train(cfg(dataset, interrupted, steps=10, resume=True, arch="mlp"))
    with pytest.raises(UserError, match="lr"):
        train(cfg(dataset, interrupted, steps=10, resume=True, lr=1e-4))
    assert train(cfg(dataset, interrupted, steps=10, resume=True))["step"] == 10


def test_all_zero_gains_are_refused_before_training(tmp_path):
    zeros = tmp_path / "z.npz"
    data.save(data.Dataset(np.zeros((50, 4)), np.zeros((50, 4)), np.zeros(50),
                           {"format": "aigxctl-dataset", "total_power": 0.2, "noise": 1.0}),
              zeros)  # fmt: skip
    with pytest.raises(UserError, match="zero"):
        train(cfg(zeros, tmp_path / "m"))
    assert not (tmp_path / "m").exists()


def test_a_dataset_whose_scenario_metadata_is_not_a_table_trains(dataset, tmp_path):
    d = data.load(dataset)
    d.meta["scenario"] = "x"
    odd = tmp_path / "odd.npz"
    data.save(d, odd)
    train(cfg(odd, tmp_path / "m"))
    assert json.loads((tmp_path / "m" / "config.json").read_text())["data"][0]["scenario"] is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"hidden": 10**9}, "--hidden"),
        ({"denoise_steps": 10**9}, "--denoise-steps"),
        ({"batch": 10**12}, "--batch"),
        ({"steps": 10**12}, "--steps"),
        ({"nproc": 10**6}, "--nproc"),
    ],
)
def test_huge_training_sizes_are_refused_before_anything_runs(dataset, tmp_path, change,
                                                              message):  # fmt: skip
    with pytest.raises(UserError, match=message):
        train(cfg(dataset, tmp_path / "m", **change))
    assert list(tmp_path.iterdir()) == []


def test_huge_cycle_sizes_are_refused(tmp_path):
    for change, message in (({"hidden": 10**9}, "hidden"), ({"samples": 10**12}, "samples"),
                            ({"t1_steps": 10**12}, "t1_steps")):  # fmt: skip
        with pytest.raises(UserError, match=message):
            run_cycle(CycleConfig(**change), tmp_path / "run")
    assert list(tmp_path.iterdir()) == []


# ---- found by an adversarial review ----------------------------------------------------------


def test_two_runs_to_one_new_out_the_later_refuses_and_keeps_its_weights(dataset, tmp_path):
    out = tmp_path / "m"
    first = cfg(dataset, out, seed=1)
    second = cfg(dataset, out, seed=2)
    checkpoint.claim(out, force=False)  # both runs start while `out` is new ...
    train(first)  # ... the first one finishes first
    before = snapshot(out)
    with pytest.raises(UserError, match="pass --force") as info:
        _train_after_claim(second)
    assert "saved to" in str(info.value) and snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def _train_after_claim(config: TrainConfig) -> None:
    """Train as if `out` had been claimed while still new (the race): skip the early check."""
    import aigxctl.train as train_mod

    real = checkpoint.claim
    calls = []

    def first_call_passes(out, *, force, resume=False):
        calls.append(out)
        return Path(os.path.realpath(out)) if len(calls) == 1 else real(out, force=force,
                                                                        resume=resume)  # fmt: skip

    train_mod.checkpoint.claim = first_call_passes
    try:
        train(config)
    finally:
        train_mod.checkpoint.claim = real


def test_zero_is_a_value_not_a_default(run, dataset, tmp_path):
    res = run("train", "--data", dataset, "--out", tmp_path / "m", "--lr", "0")
    assert res.exit_code == 2 and "--lr must be a finite number > 0" in res.stderr
    res = run("train", "--data", dataset, "--out", tmp_path / "m", "--steps", "3",
              "--hidden", "8", "--rate-weight", "0")  # fmt: skip
    assert res.exit_code == 0, res.stderr
    doc = json.loads((tmp_path / "m" / "config.json").read_text())
    assert doc["train"]["rate_weight"] == 0.0


def test_a_device_as_dataset_is_refused_without_reading_it(run, tmp_path):
    res = run("evaluate", "--model", checkpoint.default_model_path(), "--data", "/dev/zero")
    assert res.exit_code == 2 and "not a regular file" in res.stderr


def test_a_replaced_checkpoint_keeps_its_permissions(dataset, tmp_path):
    out = tmp_path / "priv"
    train(cfg(dataset, out))
    out.chmod(0o700)
    for f in out.iterdir():
        f.chmod(0o600)
    train(cfg(dataset, out, seed=5, force=True))
    assert out.stat().st_mode & 0o777 == 0o700
    assert {f.stat().st_mode & 0o777 for f in out.iterdir()} == {0o600}


def test_cycle_force_cleans_a_killed_runs_staging_and_refuses_before_changing_anything(
    tmp_path,
):
    tiny = CycleConfig(samples=200, t1_steps=4, t3_steps=2, eval_samples=50, hidden=8,
                       val_every=2, sac=False, mlp=False)  # fmt: skip
    out = tmp_path / "run"
    run_cycle(tiny, out)
    stale = out / "models" / f".t1_gdm.{2**22 + 7}.0123abcd.tmp"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    run_cycle(tiny, out, force=True)
    assert not stale.exists()
    (out / "models" / "t1_gdm" / "notes.txt").write_text("mine")
    before = (out / "data" / "t1.npz").read_bytes()
    with pytest.raises(UserError, match=r"notes\.txt"):
        run_cycle(tiny, out, force=True)
    assert (out / "data" / "t1.npz").read_bytes() == before
