"""The fused sampler: the trained denoiser packed once into one flat float32 buffer, then the
whole reverse diffusion run by the compiled core in one call (CPU thread pool or one CUDA
launch).

Packing does, once per model, the work the plain sampler repeats at every step: the time branch
becomes a per-step bias of the first trunk layer, and the condition branch's second layer is
folded into the condition part of the first trunk layer (a matrix product done in float64), so a
step costs the x-dependent part of the first layer, the second layer and the output layer. The
result equals :func:`aigxctl.diffusion.sample_reference` given the same noise (tests check it).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aigxctl import core
from aigxctl.errors import UserError
from aigxctl.settings import ALLOC_MAPS

__all__ = ["FusedSampler", "pack_denoiser", "step_constants", "supports"]

PRED_CODES = {"eps": 0, "x0": 1}
# AllocMap (csrc/denoise.h): the index of each name in settings.ALLOC_MAPS.
MAP_CODES = {name: i for i, name in enumerate(ALLOC_MAPS)}
MODE_CODES = {"ancestral": 0, "ddim": 1}


def step_constants(betas: np.ndarray) -> np.ndarray:
    """The per-step constants of the reverse process for these betas, float32 ``[T, 9]`` in the
    order of ``StepConsts`` (csrc/denoise.h): :meth:`aigxctl.diffusion.Schedule.step_constants`."""
    from aigxctl.diffusion import Schedule  # it imports torch, which this module defers

    return Schedule.from_betas(betas).step_constants()


def supports(denoiser: Any) -> str | None:
    """None when the fused sampler can run ``denoiser``, else the reason it cannot."""
    import torch.nn as nn

    try:
        c1, act_c, c2 = denoiser.cond_mlp
        _emb, t1, act_t, t2 = denoiser.time_mlp  # the embedding runs as is, at pack time
        m1, act1, m2, act2, m3 = denoiser.mid
    except (AttributeError, TypeError, ValueError):
        return "the denoiser is not the reference MLP (cond_mlp / time_mlp / mid)"
    linears = (c1, c2, t1, t2, m1, m2, m3)
    if not all(isinstance(x, nn.Linear) and x.bias is not None for x in linears):
        return "the denoiser's layers are not biased nn.Linear"
    if not all(isinstance(a, nn.Mish) for a in (act_c, act_t, act1, act2)):
        return "the denoiser's activations are not Mish"
    m, hidden = c1.in_features, c1.out_features
    t_dim = t2.out_features
    if m1.in_features != m + t_dim + hidden or m3.out_features != m:
        return "the trunk's shapes do not match [x, t_emb, cond_emb]"
    return None


def pack_denoiser(
    denoiser: Any,
    betas: np.ndarray,
    cond_mean: np.ndarray,
    cond_std: np.ndarray,
) -> tuple[np.ndarray, dict[str, int]]:
    """Pack a reference-shape denoiser into the flat float32 buffer of ``core.pack_layout``.

    Returns the buffer and the dims ``{"m", "hidden", "steps"}``.
    """
    import torch

    reason = supports(denoiser)
    if reason is not None:
        raise ValueError(f"cannot fuse this denoiser: {reason}")
    c1, _, c2 = denoiser.cond_mlp
    m1, _, m2, _, m3 = denoiser.mid
    m, hidden, steps = c1.in_features, c1.out_features, len(betas)
    t_dim = denoiser.time_mlp[3].out_features

    def f64(t: torch.Tensor) -> np.ndarray:
        return t.detach().cpu().double().numpy()

    w0 = f64(m1.weight)  # [H, M + t_dim + H], input order [x, t_emb, cond_emb]
    w0x, w0t, w0c = w0[:, :m], w0[:, m : m + t_dim], w0[:, m + t_dim :]
    with torch.no_grad():
        dev = next(denoiser.parameters()).device
        t = torch.arange(steps, dtype=torch.float64, device=dev)
        t_emb = f64(copy.deepcopy(denoiser.time_mlp).double()(t))
    layout = core.pack_layout(m, hidden, steps)
    pack = np.zeros(layout["total"], dtype=np.float32)

    def put(name: str, value: np.ndarray) -> None:
        flat = np.ascontiguousarray(value, dtype=np.float32).ravel()
        pack[layout[name] : layout[name] + flat.size] = flat

    put("cond_mean", np.broadcast_to(np.asarray(cond_mean, np.float64), (m,)))
    put("cond_std", np.broadcast_to(np.asarray(cond_std, np.float64), (m,)))
    put("w_c1", f64(c1.weight).T)
    put("b_c1", f64(c1.bias))
    put("w_cc", (w0c @ f64(c2.weight)).T)
    put("b_cc", w0c @ f64(c2.bias) + f64(m1.bias))
    put("w_x", w0x.T)
    put("step_bias", t_emb @ w0t.T)
    put("w_2", f64(m2.weight).T)
    put("b_2", f64(m2.bias))
    w3 = np.zeros((hidden, layout["m_pad"]))  # zero-padded output columns
    w3[:, :m] = f64(m3.weight).T
    put("w_3", w3)
    put("b_3", np.pad(f64(m3.bias), (0, layout["m_pad"] - m)))
    put("consts", step_constants(betas))
    return pack, {"m": m, "hidden": hidden, "steps": steps}


@dataclass
class FusedSampler:
    """A packed denoiser ready to sample. ``pack`` is float32 on the host; a CUDA copy is made on
    first use with CUDA tensors."""

    pack: np.ndarray
    m: int
    hidden: int
    steps: int
    pred: str
    alloc_map: str = "abs"
    _device_pack: Any = None
    # precision -> (the pack it was made from, core.cpu_pack of it)
    _cpu_packs: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def from_denoiser(
        cls,
        denoiser: Any,
        betas: np.ndarray,
        cond_mean: np.ndarray,
        cond_std: np.ndarray,
        pred: str,
        alloc_map: str = "abs",
    ) -> FusedSampler:
        if pred not in PRED_CODES:
            raise ValueError(f"pred must be one of {sorted(PRED_CODES)}, got {pred!r}")
        if alloc_map not in MAP_CODES:
            raise ValueError(f"alloc_map must be one of {', '.join(MAP_CODES)}, got {alloc_map!r}")
        pack, dims = pack_denoiser(denoiser, betas, cond_mean, cond_std)
        return cls(pack=pack, pred=pred, alloc_map=alloc_map, **dims)

    def __getstate__(self) -> dict[str, Any]:
        # The core's copies (CPU pack, GPU pack) are caches, rebuilt on first use after a copy.
        return {**self.__dict__, "_cpu_packs": {}, "_device_pack": None}

    def cpu_pack(self, precision: str = "f32") -> Any:
        """The core's CPU copy of the pack in ``precision``, built on first use and again when
        ``pack`` is replaced (its contents are not watched: replace it, do not write into it)."""
        made = self._cpu_packs.get(precision)
        if made is None or made[0] is not self.pack:
            made = (self.pack, core.cpu_pack(self.pack, self.m, self.hidden, self.steps, precision))
            self._cpu_packs[precision] = made
        return made[1]

    def sample(
        self,
        gains: Any,
        total_power: Any,
        *,
        mode: str = "ancestral",
        noise: Any = None,
        seed: int = 0,
        precision: str = "f32",
        float64: bool = False,
    ) -> Any:
        """Allocations ``[B, M]`` for raw gains ``[B, M]`` (NumPy or torch; CUDA tensors run on
        the GPU), float32, or float64 with ``float64`` on the CPU. ``noise`` is ``[T+1, B, M]``
        (start sample, then one slot per step); without it the core draws Philox normals from
        ``seed``, the same normals on the CPU and the GPU.
        The CPU and the GPU run the same math (aigx_hd.h), equal within 1e-5, not bit for bit:
        their exp and Mish differ in the last bits. ``precision`` "bf16" (CPU only) rounds the
        weights and activations of the matrix products to bfloat16."""
        if mode not in MODE_CODES:
            raise ValueError(f"mode must be one of {sorted(MODE_CODES)}, got {mode!r}")
        tensor_in = core.is_torch(gains)
        if tensor_in and core.is_cuda_tensor(gains):
            import torch

            if precision != "f32":
                raise UserError(f"precision {precision} runs on the CPU only, not on CUDA")
            if self._device_pack is None or self._device_pack.device != gains.device:
                self._device_pack = torch.from_numpy(self.pack).to(gains.device)
            return core.fused_sample_cuda(
                self._device_pack, self.m, self.hidden, self.steps, PRED_CODES[self.pred],
                gains, total_power, noise, seed, MODE_CODES[mode], MAP_CODES[self.alloc_map],
            )  # fmt: skip
        g = gains.detach().cpu().numpy() if tensor_in else gains
        if noise is not None and core.is_torch(noise):
            noise = noise.detach().cpu().numpy()
        power = core.fused_sample(
            self.cpu_pack(precision), PRED_CODES[self.pred], g, total_power, noise, seed,
            MODE_CODES[mode], MAP_CODES[self.alloc_map], float64,
        )  # fmt: skip
        if tensor_in:
            import torch

            return torch.from_numpy(power).to(gains.device)
        return power
