"""CPU causal attention: tunewise's kernel against PyTorch's SDPA (its CPU flash kernel), fwd + bwd.

One example of each length, the embedded model's attention shape (9 query / 3 KV heads of 64) in the
dtype `tunewise train` computes in on this CPU (bf16 with native bf16 matmul, else fp32; --dtype),
q/k/v laid out as transformers hands them over; best of --reps timed forward + backward passes per
kernel, the two kernels alternating so drift hits both alike. Prints ms per layer and the ratio.

    .venv/bin/python bench/attention_cpu.py                      # lengths 128 ... 4096
    .venv/bin/python bench/attention_cpu.py --lengths 189,512 --reps 20
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from tunewise.train.attention import _CausalAttention

HEADS, KV_HEADS, DIM = 9, 3, 64


def sdpa(q, k, v):
    # in the layout the output projection reads, as transformers' sdpa attention returns it
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True).transpose(1, 2).contiguous()


def tunewise(q, k, v):
    return _CausalAttention.apply(q, k, v, DIM ** -0.5, ((0, q.shape[2]),))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="128,256,512,1024,2048,4096", help="comma-separated example lengths")
    ap.add_argument("--reps", type=int, default=8, help="timed passes per kernel and length (best is kept)")
    ap.add_argument("--dtype", choices=["auto", "bf16", "fp32"], default="auto",
                    help="auto: what `precision: auto` picks on this CPU")
    args = ap.parse_args()
    from tunewise.hardware import cpu_info, describe_cpu

    cpu = cpu_info()
    name = args.dtype if args.dtype != "auto" else ("bf16" if cpu["native_bf16"] else "fp32")
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[name]
    try:
        lengths = [int(x) for x in args.lengths.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"--lengths: expected comma-separated integers, got {args.lengths!r}") from None
    if not lengths or min(lengths) < 1 or args.reps < 1:
        raise SystemExit("--lengths must be positive integers and --reps at least 1")
    print(f"CPU: {describe_cpu(cpu)} (flags: {' '.join(cpu['flags']) or '-'})")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {name}, "
          f"{HEADS} query / {KV_HEADS} KV heads of {DIM}; fwd + bwd per layer, best of {args.reps}")
    print(f"{'tokens':>7}{'SDPA ms':>10}{'tunewise ms':>13}{'speed-up':>10}")
    for n in lengths:
        g = torch.Generator().manual_seed(n)
        q = torch.randn(1, n, HEADS, DIM, generator=g).to(dtype).transpose(1, 2).requires_grad_()
        k = torch.randn(1, n, KV_HEADS, DIM, generator=g).to(dtype).transpose(1, 2).requires_grad_()
        v = torch.randn(1, n, KV_HEADS, DIM, generator=g).to(dtype).transpose(1, 2).requires_grad_()
        dout = torch.randn(1, n, HEADS, DIM, generator=g).to(dtype)
        best = {sdpa: float("inf"), tunewise: float("inf")}
        for fn in best:  # warm-up (kernel creation)
            fn(q, k, v).backward(dout)
        for _ in range(args.reps):
            for fn in best:
                t = time.perf_counter()
                fn(q, k, v).backward(dout)
                best[fn] = min(best[fn], time.perf_counter() - t)
        a, b = best[sdpa] * 1e3, best[tunewise] * 1e3
        print(f"{n:>7}{a:>10.2f}{b:>13.2f}{a / b:>9.2f}x", flush=True)


if __name__ == "__main__":
    main()
