"""Small Int8MatMul cases over every path, run under compute-sanitizer (memcheck) by scripts/gpu_all.sh."""
import torch
from dsattn.tools.kernels import int8
from dsattn.export import ops
torch.manual_seed(0)
worst = 0.0
for dt in (torch.float16, torch.bfloat16, torch.float32):
    for (M, N, K, g, path) in [(3, 37, 1040, 16, 1), (9, 130, 1152, 128, 1), (17, 64, 4096, 0, 1), (130, 131, 1040, 0, 2),
                               (5, 99, 1152, 64, 2), (200, 260, 1152, 0, 2), (70, 33, 960, 32, 0)]:
        if dt == torch.float32: path = 3
        x = torch.randn(M, K, device="cuda").to(dt)
        q = torch.randint(-128, 128, (N, K), dtype=torch.int8, device="cuda")
        s = torch.rand(N, 1 if g == 0 else K // g, device="cuda") / 1000
        b = torch.randn(N, device="cuda").to(dt)
        y = int8.int8_matmul(x, q, s, b, group_size=g, path=path)
        ref = ops.int8_matmul(x.float(), q, s, b.float(), group_size=g)
        torch.cuda.synchronize()
        err = (y.float() - ref).abs().max().item()
        worst = max(worst, err / (ref.abs().max().item() + 1e-6))
        print(dt, M, N, K, g, path, err)
print("worst relative error", worst)
