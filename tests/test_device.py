"""The device half, written once and run on every device present (``devices()``): water-filling,
sum rate, the fused sampler against the PyTorch reference, Philox noise, ``load_model(...,
device=...).allocate`` and the CLI's ``--device``; the CUDA cases skip on a machine without a
GPU. Beside them, what runs on the CPU only: how ``--device`` is resolved (the one-line error
for a GPU that is not there) and the one validation every CUDA entry point's tensors go through.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import cuda_usable, devices

import aigxctl
from aigxctl import bench, core, evaluate
from aigxctl.checkpoint import load_model
from aigxctl.diffusion import Schedule, sample_reference, to_allocation
from aigxctl.errors import InvalidGains, UserError
from aigxctl.model import GDM, Denoiser
from aigxctl.settings import TrainConfig

F32 = {"rtol": 1e-5, "atol": 1e-6}


def on(device: str, x: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(x, device=device)


def host(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy()


def gains(rows: int = 257, m: int = 20, seed: int = 0) -> np.ndarray:
    g = np.random.default_rng(seed).uniform(0.0, 7.0, (rows, m))
    g[g < 0.4] = 0.0
    g[3] = 0.0
    return g


def small_gdm(m: int = 20, hidden: int = 64, steps: int = 6, pred: str = "x0") -> GDM:
    torch.manual_seed(1)
    den = Denoiser(m, hidden)
    with torch.no_grad():
        for p in den.parameters():
            p.mul_(2.0)
    rng = np.random.default_rng(1)
    return GDM(denoiser=den.eval(), schedule=Schedule.create("vp", steps), pred=pred,
               cond_mean=rng.uniform(2, 5, m), cond_std=rng.uniform(0.5, 2, m), total_power=0.2,
               noise=1.0)  # fmt: skip


# --- the same results on every device -----------------------------------------------------------


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_waterfill_and_sum_rate(device, dtype):
    g = gains()
    total = np.random.default_rng(2).uniform(0.01, 3.0, len(g))
    gt = on(device, g).to(dtype)
    p, mu = aigxctl.waterfill(gt, total, return_level=True)
    assert p.device.type == device and p.dtype == dtype and mu.device.type == device
    p_ref, mu_ref = aigxctl.waterfill(g, total, return_level=True)
    tol = F32 if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-13}
    np.testing.assert_allclose(host(p), p_ref, **tol)
    np.testing.assert_allclose(host(mu), mu_ref, rtol=1e-6 if dtype == torch.float32 else 1e-12)
    rate = aigxctl.sum_rate(gt, p)
    assert rate.device.type == device and rate.dtype == torch.float64
    np.testing.assert_allclose(host(rate), aigxctl.sum_rate(g, p_ref), **F32)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("where", ["numpy", "cpu tensor"])
def test_sum_rate_takes_power_from_anywhere(device, where):
    # The power may live elsewhere than the gains (the CUDA path once read a host pointer).
    g = gains(64, 8)
    p = aigxctl.waterfill(g, 0.5)
    power = p if where == "numpy" else torch.as_tensor(p)
    rate = aigxctl.sum_rate(on(device, g), power)
    assert rate.device.type == device
    np.testing.assert_allclose(host(rate), aigxctl.sum_rate(g, p), rtol=1e-12)
    with pytest.raises(UserError, match="shape of gains"):
        aigxctl.sum_rate(on(device, g), power[:, :4])


@pytest.mark.parametrize("device", devices())
def test_invalid_gains_are_named_on_every_device(device):
    g = gains(300, 4)
    g[201, 2] = np.nan
    with pytest.raises(InvalidGains) as info:
        aigxctl.waterfill(on(device, g), 1.0)
    assert (info.value.row, info.value.column) == (201, 2)
    with pytest.raises(InvalidGains):
        small_gdm(m=4).allocate(on(device, g), seed=0)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("mode", ["ancestral", "ddim"])
@pytest.mark.parametrize("pred", ["x0", "eps"])
def test_fused_sampler_matches_the_pytorch_reference(device, mode, pred):
    model = small_gdm(pred=pred)
    g = gains(37, seed=3) + 0.5
    noise = torch.randn(model.T + 1, len(g), model.m, generator=torch.Generator().manual_seed(4))
    x = sample_reference(model.denoiser, model.schedule,
                         model.normalise(torch.as_tensor(g, dtype=torch.float32)), noise,
                         pred=pred, mode=mode)  # fmt: skip
    expected = to_allocation(x, 0.2).numpy()
    got = model.fused_sampler().sample(on(device, g), 0.2, mode=mode, noise=noise.to(device))
    assert got.device.type == device
    np.testing.assert_allclose(host(got), expected, atol=1e-5)


@pytest.mark.parametrize("device", devices())
def test_philox_noise_is_the_same_on_every_device(device):
    # Without given noise the samplers draw Philox normals from the seed: the ones philox_normals
    # computes on the CPU, whatever the device and the batch.
    model = small_gdm(m=13, hidden=32, steps=4)
    g = gains(21, 13, seed=5) + 0.5
    sampler = model.fused_sampler()
    drawn = sampler.sample(on(device, g), 0.2, mode="ancestral", seed=99)
    given = sampler.sample(g, 0.2, mode="ancestral", noise=core.philox_normals(99, 21, 5, 13))
    np.testing.assert_allclose(host(drawn), given, atol=1e-5)
    first = sampler.sample(on(device, g[:5]), 0.2, mode="ancestral", seed=99)
    np.testing.assert_allclose(host(first), host(drawn)[:5], atol=1e-6)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("backend", ["fused", "torch"])
@pytest.mark.parametrize("best_of", [1, 3])
def test_load_model_on_a_device_allocates_there(device, backend, best_of):
    cpu = load_model(None)
    model = load_model(None, device=device)
    assert model.device.type == device
    g = gains(50, cpu.m, seed=6) + 0.1
    kw = {"backend": backend, "best_of": best_of, "seed": 7, "mode": "ancestral"}
    expected = cpu.allocate(g, **kw)
    out = model.allocate(g, **kw)  # NumPy in, NumPy out, computed on the device
    assert isinstance(out, np.ndarray) and out.dtype == np.float64
    np.testing.assert_allclose(out, expected, atol=1e-5)
    t = model.allocate(on(device, g).float(), **kw)  # a tensor in: a tensor on its device out
    assert t.device.type == device and t.dtype == torch.float32
    np.testing.assert_allclose(host(t), expected, atol=1e-5)
    one = model.allocate(on(device, g[0]), **kw)
    assert one.shape == (cpu.m,) and one.device.type == device
    np.testing.assert_allclose(one.sum().item(), 0.2, rtol=1e-5)


@pytest.mark.parametrize("device", devices())
def test_a_cpu_model_follows_cuda_tensors(device):
    # A model loaded on the CPU given tensors on the device answers on that device.
    model = load_model(None)
    g = gains(9, model.m, seed=8) + 0.1
    out = model.allocate(on(device, g), seed=3)
    assert out.device.type == device and out.dtype == torch.float64
    np.testing.assert_allclose(host(out), model.allocate(g, seed=3), atol=1e-5)


@pytest.mark.parametrize("device", devices())
def test_evaluate_on_a_device(device):
    model = load_model(None, device=device)
    g = gains(200, model.m, seed=9) + 0.1
    res = evaluate.evaluate(model, g, seed=1, device=core.resolve_device(device))
    ref = evaluate.evaluate(load_model(None), g, seed=1)
    assert res["device"].startswith(device)
    for key in ("model_rate", "optimum_rate", "equal_rate", "random_rate"):
        assert res[key] == pytest.approx(ref[key], rel=1e-5), key


@pytest.mark.parametrize("device", devices())
def test_cli_allocate_and_evaluate_with_device(run, write, device):
    path = write("g.csv", "\n".join(",".join(f"{v:.6g}" for v in row)
                                    for row in gains(6, 20, seed=10) + 0.1) + "\n")  # fmt: skip
    outs = {}
    for dev in ("cpu", device):
        for method in ("waterfill", "gdm"):
            res = run("allocate", "-g", path, "-m", method, "--seed", "1", "--device", dev,
                      *(("--mode", "ddim") if method == "gdm" else ()))  # fmt: skip
            assert res.exit_code == 0, res.output
            assert f" on {dev}" in res.stderr
            outs[dev, method] = np.loadtxt(res.stdout.splitlines()[1:], delimiter=",")
    for method in ("waterfill", "gdm"):
        np.testing.assert_allclose(outs[device, method], outs["cpu", method], atol=1e-5)
    res = run("evaluate", "--model", load_model_dir(), "-s", "t1", "-n", "300", "--device",
              device)  # fmt: skip
    assert res.exit_code == 0, res.output
    assert f"backend on {device}" in res.stdout


def load_model_dir() -> str:
    from aigxctl.checkpoint import default_model_path

    return str(default_model_path())


@pytest.mark.parametrize("device", devices())
def test_bench_with_device(run, device):
    res = run("bench", "waterfill", "--batches", "100", "--channels", "8", "--repeats", "1",
              "--device", device, "--json")  # fmt: skip
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["device"].startswith(device) and out["cases"][0]["rows_per_s"]["core"] > 0
    res = run("bench", "sample", "--batches", "1,7", "--repeats", "1", "--no-compile",
              "--device", device, "--json")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["device"].startswith(device)


def test_torch_sort_solver_is_exact():
    g = torch.as_tensor(gains(500, 16, seed=11))
    np.testing.assert_allclose(host(bench.torch_waterfill(g, 0.3, 0.7)),
                               aigxctl.waterfill(g.numpy(), 0.3, 0.7), atol=1e-12)  # fmt: skip


@pytest.mark.cuda
@pytest.mark.skipif(not cuda_usable() or torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_the_second_gpu_computes_on_the_second_gpu():
    # The core selects the tensor's GPU itself (its own CUDA runtime): device 1 is device 1.
    g = gains(1000, 20, seed=12)
    p = aigxctl.waterfill(on("cuda:1", g), 0.2)
    assert p.device == torch.device("cuda:1")
    np.testing.assert_allclose(host(p), aigxctl.waterfill(g, 0.2), rtol=1e-12)
    r = aigxctl.sum_rate(on("cuda:1", g), p)
    assert r.device == torch.device("cuda:1")
    model = load_model(None, device="cuda:1")
    out = model.allocate(on("cuda:1", g).float(), seed=2)
    assert out.device == torch.device("cuda:1")
    np.testing.assert_allclose(host(out), load_model(None).allocate(g, seed=2), atol=1e-5)
    with torch.cuda.device(0):  # torch's current device is not where the data is
        p0 = aigxctl.waterfill(on("cuda:1", g), 0.2)
    np.testing.assert_allclose(host(p0), host(p), rtol=0)


@pytest.mark.cuda
def test_debug_sync_mode_runs(monkeypatch):
    monkeypatch.setenv("AIGX_CUDA_SYNC", "1")
    g = gains(100, 20)
    np.testing.assert_allclose(host(aigxctl.waterfill(on("cuda", g), 0.2)),
                               aigxctl.waterfill(g, 0.2), rtol=1e-12)  # fmt: skip
    out = small_gdm().fused_sampler().sample(on("cuda", g + 0.1), 0.2, seed=1)
    assert out.is_cuda


# --- --device: resolved in one place, one line when the GPU is not there -------------------------


def test_resolve_device_specs():
    assert core.resolve_device("cpu") == "cpu"
    assert core.resolve_device(torch.device("cpu")) == "cpu"
    assert core.resolve_device(" CPU ") == "cpu"
    for bad in ("gpu", "cpu:1", "cuda:", "cuda:-1", "auto:0", "", "cuda:x"):
        with pytest.raises(UserError, match="--device must be auto, cpu, cuda or cuda:N"):
            core.resolve_device(bad)
    with pytest.raises(UserError, match=r"^device must be"):
        load_model(None, device="tpu")


def fake_gpus(monkeypatch, core_sees: int, torch_sees: int, built: bool = True) -> None:
    monkeypatch.setattr(core._core, "cuda_built", lambda: built)
    monkeypatch.setattr(core._core, "cuda_device_count", lambda: core_sees)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: torch_sees > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: torch_sees)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


@pytest.mark.parametrize(
    ("core_sees", "torch_sees", "built", "why"),
    [
        (0, 0, False, "built without CUDA"),
        (0, 1, True, "the core sees no GPU"),
        (2, 0, True, "torch sees no GPU"),
    ],
)
def test_auto_is_the_cpu_unless_both_see_a_gpu(monkeypatch, core_sees, torch_sees, built, why):
    fake_gpus(monkeypatch, core_sees, torch_sees, built)
    assert core.resolve_device("auto") == "cpu"
    with pytest.raises(UserError, match=why) as info:
        core.resolve_device("cuda")
    assert "\n" not in str(info.value)


def test_auto_and_cuda_n_with_gpus(monkeypatch):
    fake_gpus(monkeypatch, 2, 2)
    assert core.resolve_device("auto") == "cuda:0"
    assert core.resolve_device("cuda") == "cuda:0"
    assert core.resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(UserError, match=r"only 2 GPUs \(cuda:0 to cuda:1\)"):
        core.resolve_device("cuda:2", option="--dev")
    fake_gpus(monkeypatch, 1, 3)  # the fewer of the two counts
    with pytest.raises(UserError, match="only 1 GPU "):
        core.resolve_device("cuda:1")


NO_GPU_COMMANDS = [
    ("allocate", "-g", "-"),
    ("allocate", "-g", "-", "-m", "gdm"),
    ("evaluate", "--model", "m", "-s", "t1"),
    ("cycle", "--quick", "-o", "{tmp}/run"),
    ("train", "-o", "{tmp}/model", "-d", "{tmp}/none.npz"),
    ("bench", "waterfill"),
    ("bench", "sample"),
]


@pytest.mark.skipif(cuda_usable(), reason="checks the error on a machine without a GPU")
@pytest.mark.parametrize("command", NO_GPU_COMMANDS, ids=lambda c: " ".join(c[:2]))
@pytest.mark.parametrize("spec", ["cuda", "cuda:1"])
def test_cuda_without_a_gpu_is_one_line_and_exit_2(run, tmp_path, command, spec):
    args = [a.format(tmp=tmp_path) for a in command]
    res = run(*args, "--device", spec, input="1,2\n")
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and f"--device {spec}: no usable CUDA GPU here" in lines[0], lines
    assert "Traceback" not in res.output and not res.stdout
    assert not (tmp_path / "run").exists() and not (tmp_path / "model").exists()


@pytest.mark.parametrize("command", NO_GPU_COMMANDS[:1] + NO_GPU_COMMANDS[-2:])
def test_a_bad_device_is_one_line(run, command):
    res = run(*command, "--device", "gpu0", input="1,2\n")
    assert res.exit_code == 2, res.output
    assert "--device must be auto, cpu, cuda or cuda:N, got 'gpu0'" in res.stderr


def test_train_on_the_cpu_says_so(run, dataset, tmp_path, torch_one_thread):
    res = run("train", "-o", tmp_path / "m", "-d", dataset, "--steps", "3", "--hidden", "8",
              "--val-every", "3", "--device", "cpu", "--quiet")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert " on cpu" in res.stderr


def test_train_config_device_checks():
    with pytest.raises(UserError, match="--device must be auto, cpu, cuda or cuda:N"):
        TrainConfig(out="x", data=["d"], device="gpu").check()
    TrainConfig(out="x", data=["d"], device="cpu").check()


# --- the one validation every CUDA entry point's tensors go through ------------------------------


def test_check_tensor_refuses_what_would_corrupt_memory():
    t = torch.zeros(3, 4)
    check = core.check_tensor
    ok = {"device": "cpu", "dtypes": (torch.float32,), "shape": (3, None)}
    assert check("gains", t, **ok) == t.data_ptr()
    with pytest.raises(ValueError, match=r"gains: expected float32, got float16"):
        check("gains", t.half(), **ok)
    with pytest.raises(ValueError, match=r"x: expected float32 or float64, got int64"):
        check("x", t.long(), **{**ok, "dtypes": (torch.float32, torch.float64)})
    with pytest.raises(ValueError, match=r"gains: expected a contiguous tensor"):
        check("gains", torch.zeros(4, 3).T, **ok)
    with pytest.raises(ValueError, match=r"gains: expected shape \[3, \*\], got \[12\]"):
        check("gains", t.reshape(12), **ok)
    with pytest.raises(ValueError, match=r"noise: expected shape \[5, 3, 4\], got \[4, 3, 4\]"):
        check("noise", torch.zeros(4, 3, 4), **{**ok, "shape": (5, 3, 4)})
    with pytest.raises(ValueError, match=r"gains: expected a tensor on cuda:0, got cpu"):
        check("gains", t, **{**ok, "device": "cuda:0"})
    with pytest.raises(TypeError, match="expected a torch tensor, got ndarray"):
        check("gains", np.zeros((3, 4), np.float32), **ok)


def test_cuda_entry_points_refuse_host_tensors():
    # Called directly with CPU tensors, the CUDA entry points stop in Python, before the core.
    m, hidden, steps = 4, 8, 2
    pack = torch.zeros(core.pack_layout(m, hidden, steps)["total"])
    with pytest.raises(ValueError, match="fused_sample_cuda: the CUDA kernels take CUDA tensors"):
        core.fused_sample_cuda(pack, m, hidden, steps, 0, torch.ones(2, m), 0.2, None, 0, 0)
    for entry in ("waterfill_cuda", "sum_rate_cuda"):
        with pytest.raises(ValueError, match=f"{entry}: the CUDA kernels take CUDA tensors"):
            core._launch(entry, torch.device("cpu"), 0)


def test_fused_cuda_checks_shapes_before_the_core():
    m, hidden, steps = 4, 8, 2
    layout = core.pack_layout(m, hidden, steps)
    with pytest.raises(UserError, match=r"gains must have shape \[B, 4\]"):
        core.fused_sample_cuda(torch.zeros(layout["total"]), m, hidden, steps, 0,
                               torch.ones(2, 5), 0.2, None, 0, 0)  # fmt: skip


@pytest.mark.cuda
def test_cuda_validation_on_the_gpu():
    m, hidden, steps = 4, 8, 2
    total = core.pack_layout(m, hidden, steps)["total"]
    g = torch.ones(3, m, device="cuda")
    with pytest.raises(ValueError, match="pack: expected shape"):
        core.fused_sample_cuda(torch.zeros(total + 1, device="cuda"), m, hidden, steps, 0, g,
                               0.2, None, 0, 0)  # fmt: skip
    with pytest.raises(ValueError, match="pack: expected a tensor on cuda"):
        core.fused_sample_cuda(torch.zeros(total), m, hidden, steps, 0, g, 0.2, None, 0, 0)
    with pytest.raises(ValueError, match="noise: expected shape"):
        core.fused_sample_cuda(torch.zeros(total, device="cuda"), m, hidden, steps, 0, g, 0.2,
                               torch.zeros(steps, 3, m, device="cuda"), 0, 0)  # fmt: skip
    with pytest.raises(ValueError, match="pack: expected float32"):
        core.fused_sample_cuda(torch.zeros(total, device="cuda").half(), m, hidden, steps, 0, g,
                               0.2, None, 0, 0)  # fmt: skip
    # The binding's own checks, past Python: a pack of the wrong size, noise of the wrong shape.
    with pytest.raises(ValueError, match="pack has the wrong size"):
        core._core.fused_sample_cuda(0, 1, total + 1, m, hidden, steps, 0, 1, 3, 1, 1, 0, [], 0,
                                     0, 1, 0)  # fmt: skip
    with pytest.raises(ValueError, match="noise must be"):
        core._core.fused_sample_cuda(0, 1, total, m, hidden, steps, 0, 1, 3, 1, 1, 1,
                                     [steps, 3, m], 0, 0, 1, 0)  # fmt: skip
    with pytest.raises(ValueError, match="total_power must hold 1 or rows values"):
        core._core.waterfill_cuda(0, 0, 1, 1, 1, 1, 2, 3, m, 1.0, 0)

