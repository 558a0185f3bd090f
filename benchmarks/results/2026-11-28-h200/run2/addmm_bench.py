# ruff: noqa: B023  (each closure is timed inside its own iteration of the loop)
# The LoRA sum under bf16 autocast, forward + backward: PEFT's three kernels against one addmm.
import torch
import triton.testing as tt
torch.manual_seed(0)
for rows, out in ((6000, 2048), (6000, 1024), (750, 2048)):
    x = torch.randn(rows, 2048, device="cuda", dtype=torch.bfloat16)
    base = torch.randn(out, 2048, device="cuda", dtype=torch.bfloat16)
    a = torch.randn(64, 2048, device="cuda", requires_grad=True)
    b = torch.randn(out, 64, device="cuda", requires_grad=True)
    def peft():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            r = torch.nn.functional.linear(x, base)
            y = r + torch.nn.functional.linear(torch.nn.functional.linear(x, a), b) * 2.0
        y.float().sum().backward()
    def fused():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            r = torch.nn.functional.linear(x, base)
            y = torch.addmm(r, torch.nn.functional.linear(x, a), b.t(), alpha=2.0)
        y.float().sum().backward()
    for name, f in (("peft", peft), ("addmm", fused), ("peft", peft), ("addmm", fused)):
        ms = tt.do_bench(f, warmup=25, rep=200, return_mode="median")
        print(f"rows {rows} out {out} {name:6s} {ms:.3f} ms fwd+bwd")
