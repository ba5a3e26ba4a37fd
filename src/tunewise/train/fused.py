"""Leaner backward for the two blocks that hold most of a LoRA run's activation memory.

Autograd keeps, per token and decoder layer of a Llama-style model trained in 16 bits, about 22 KB
(SmolLM2-135M): the MLP alone keeps its gate and up projections, the SiLU output and the product
fed to ``down_proj`` (4 x intermediate values), and each RMSNorm keeps an fp32 copy of its input.
Two autograd functions keep less and compute the same gradients:

* :class:`_SwiGLUMLP` — ``down(silu(gate(x)) * up(x))`` with optional LoRA on each projection: keeps
  ``x`` and the gate and up projections only, and recomputes the SiLU and the product in backward
  (element-wise work, no matmul is repeated). The base weights must be frozen plain ``nn.Linear``
  layers (so not QLoRA's 4-bit ones, nor full fine-tuning); LoRA dropout, DoRA, biases and merged
  or disabled adapters keep PEFT's own path.
* :class:`_RMSNorm` — keeps its 16-bit input and one fp32 scale per token instead of the fp32 copy.

:func:`install` swaps them in per module after checking, on a small random input, that the module's
own forward gives the same output; anything that does not match (another activation, a fused
gate-up projection, Gemma's ``1 + weight`` norm) keeps its original forward. The parameters and the
saved adapter are untouched: this only changes how the forward and backward are computed.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn

_FUSED = "_tunewise_fused"


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    dev = x.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return x.dtype


class _RMSNorm(torch.autograd.Function):
    """``weight * (x * rsqrt(mean(x²) + eps)).to(x.dtype)`` computed in fp32, as Llama's RMSNorm."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        xf = x.float()
        rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True).add_(eps))
        y = weight * (xf * rstd).to(x.dtype)
        ctx.save_for_backward(x, weight, rstd)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, rstd = ctx.saved_tensors
        xhat = x.float().mul_(rstd)
        g = (dy * weight).float()
        dx = None
        if ctx.needs_input_grad[0]:
            dot = (g * xhat).mean(-1, keepdim=True)
            dx = g.sub_(xhat * dot).mul_(rstd).to(x.dtype)
        dw = None
        if ctx.needs_input_grad[1]:
            dw = (dy * xhat.to(x.dtype)).reshape(-1, x.shape[-1]).float().sum(0).to(weight.dtype)
        return dx, dw, None


def _norm_forward(self, hidden_states):
    return _RMSNorm.apply(hidden_states, self.weight, self.variance_epsilon)


class _SwiGLUMLP(torch.autograd.Function):
    """``down(silu(gate(x)) * up(x))``, each projection ``x W^T + s (x A^T) B^T`` (LoRA optional).

    Saves x, the gate projection e and the up projection u; backward recomputes silu(e) and the
    product. Base weights are frozen (no gradient); LoRA A/B get theirs.
    """

    @staticmethod
    def forward(ctx, x, wg, wu, wd, ag, bg, au, bu, ad, bd, sg, su, sd):
        dt = _compute_dtype(x)
        shape = x.shape
        with torch.autocast(x.device.type, enabled=False):
            x2 = x.reshape(-1, shape[-1]).to(dt)
            w = [t.to(dt) for t in (wg, wu, wd)]
            lora = [None if t is None else t.to(dt) for t in (ag, bg, au, bu, ad, bd)]
            e = x2 @ w[0].t()
            u = x2 @ w[1].t()
            if lora[0] is not None:
                e.addmm_(x2 @ lora[0].t(), lora[1].t(), alpha=sg)
            if lora[2] is not None:
                u.addmm_(x2 @ lora[2].t(), lora[3].t(), alpha=su)
            h = F.silu(e).mul_(u)
            y = h @ w[2].t()
            if lora[4] is not None:
                y.addmm_(h @ lora[4].t(), lora[5].t(), alpha=sd)
        ctx.save_for_backward(x2, e, u, wg, wu, wd, ag, bg, au, bu, ad, bd)
        ctx.scales = (sg, su, sd)
        ctx.x_meta = (shape, x.dtype)
        return y.reshape(*shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, dy):
        x2, e, u, wg, wu, wd, ag, bg, au, bu, ad, bd = ctx.saved_tensors
        sg, su, sd = ctx.scales
        shape, x_dtype = ctx.x_meta
        dt = e.dtype
        grads: list = [None] * 13
        with torch.autocast(x2.device.type, enabled=False):
            dy2 = dy.reshape(-1, dy.shape[-1]).to(dt)
            w = [t.to(dt) for t in (wg, wu, wd)]
            lora = [None if t is None else t.to(dt) for t in (ag, bg, au, bu, ad, bd)]
            act = F.silu(e)  # recomputed; the same roundings as autograd's path from here on
            dh = dy2 @ w[2]
            if lora[4] is not None:
                h = act * u  # the product fed to down_proj, as in forward
                dyb = dy2 @ lora[5]
                grads[9] = (sd * (dy2.t() @ (h @ lora[4].t()))).to(bd.dtype)
                grads[8] = (sd * (dyb.t() @ h)).to(ad.dtype)
                del h
                dh.addmm_(dyb, lora[4], alpha=sd)
            du = dh * act
            del act
            de = torch.ops.aten.silu_backward(dh.mul_(u), e)
            del dh
            need_x = ctx.needs_input_grad[0]
            dx = (de @ w[0]).addmm_(du, w[1]) if need_x else None
            # grads[ia] / grads[ia + 1]: the A / B of gate (4, 5) and up (6, 7), in the adapters' dtype
            for d, a, b, s, ia, param in ((de, lora[0], lora[1], sg, 4, ag), (du, lora[2], lora[3], su, 6, au)):
                if a is None:
                    continue
                db = d @ b
                grads[ia + 1] = (s * (d.t() @ (x2 @ a.t()))).to(param.dtype)
                grads[ia] = (s * (db.t() @ x2)).to(param.dtype)
                if need_x:
                    dx.addmm_(db, a, alpha=s)
        if dx is not None:
            grads[0] = dx.reshape(shape).to(x_dtype)
        return tuple(grads)


def _lora_parts(layer) -> tuple[nn.Linear, torch.Tensor | None, torch.Tensor | None, float] | None:
    """(base Linear, A, B, scaling) of a plain nn.Linear or a vanilla single-adapter PEFT LoRA layer."""
    if type(layer) is nn.Linear:
        return (layer, None, None, 1.0) if layer.bias is None and not layer.weight.requires_grad else None
    base = getattr(layer, "base_layer", None)
    if type(base) is not nn.Linear or base.bias is not None or base.weight.requires_grad:
        return None
    if getattr(layer, "merged", True) or getattr(layer, "disable_adapters", True):
        return None
    active = list(getattr(layer, "active_adapters", []))
    if len(active) != 1 or active[0] not in layer.lora_A:
        return None
    name = active[0]
    if name in getattr(layer, "lora_variant", {}) or not isinstance(layer.lora_dropout[name], nn.Identity):
        return None
    if getattr(layer, "lora_bias", {}).get(name, False):
        return None
    a, b = layer.lora_A[name], layer.lora_B[name]
    if type(a) is not nn.Linear or type(b) is not nn.Linear or a.bias is not None or b.bias is not None:
        return None
    return base, a.weight, b.weight, float(layer.scaling[name])


def _mlp_forward(self, x):
    parts = [_lora_parts(getattr(self, n)) for n in ("gate_proj", "up_proj", "down_proj")]
    if any(p is None for p in parts):  # adapters merged/disabled since install: PEFT's own path
        return type(self).forward(self, x)
    (g, ag, bg, sg), (u, au, bu, su), (d, ad, bd, sd) = parts
    return _SwiGLUMLP.apply(x, g.weight, u.weight, d.weight, ag, bg, au, bu, ad, bd, sg, su, sd)


def _same_output(module: nn.Module, new_forward, width: int, dtype: torch.dtype, device) -> bool:
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(3, width, generator=gen).to(device=device, dtype=dtype)
    # 16-bit weights train under autocast (fp32 adapters, 16-bit compute): check it the same way
    amp = torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype != torch.float32)
    try:
        with torch.no_grad(), amp:
            want = type(module).forward(module, x)
            got = new_forward(module, x)
    except Exception:  # noqa: BLE001 - a module this does not fit keeps its own forward
        return False
    if not isinstance(want, torch.Tensor) or want.shape != got.shape or want.dtype != got.dtype:
        return False
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    return bool(torch.allclose(got.float(), want.float(), rtol=tol, atol=tol * float(want.abs().max()) + 1e-6))


def install(model: nn.Module) -> dict[str, int]:
    """Use the lean functions for every matching MLP and RMSNorm in ``model``; returns the counts."""
    counts = {"mlp": 0, "rmsnorm": 0}
    for module in model.modules():
        if getattr(module, _FUSED, False):
            continue
        if all(hasattr(module, n) for n in ("gate_proj", "up_proj", "down_proj", "act_fn")):
            parts = [_lora_parts(getattr(module, n)) for n in ("gate_proj", "up_proj", "down_proj")]
            if any(p is None for p in parts):
                continue
            w = parts[0][0].weight
            if _same_output(module, _mlp_forward, w.shape[1], w.dtype, w.device):
                module.forward = types.MethodType(_mlp_forward, module)
                setattr(module, _FUSED, True)
                counts["mlp"] += 1
        elif type(module).__name__.endswith("RMSNorm") and hasattr(module, "variance_epsilon"):
            w = getattr(module, "weight", None)
            if not isinstance(w, nn.Parameter) or w.dim() != 1:
                continue
            if _same_output(module, _norm_forward, w.shape[0], w.dtype, w.device):
                module.forward = types.MethodType(_norm_forward, module)
                setattr(module, _FUSED, True)
                counts["rmsnorm"] += 1
    return counts
