"""Does another backend pay for a shipped network's forward pass? eager vs torch.compile vs ONNX Runtime.

Times the network's convolutional body (the part that dominates ``qsmnet predict``; the Tikhonov
start, flips and I/O are the same for every backend) on one random volume, interleaving the backends
over the repeats so that load on the machine affects them alike, and prints the median per backend
with the largest difference from eager. Issue 17 asks for an ONNX export if it makes CPU inference
faster and for torch.compile / AMP where they pay; this script is how that is decided.

    python scripts/benchmark_backends.py                           # unet_head, 160^3, CPU, 1 thread
    python scripts/benchmark_backends.py --threads 2 --size 128
    python scripts/benchmark_backends.py --device cuda             # adds float16 autocast (AMP)

ONNX Runtime is measured only when ``onnxruntime`` and ``onnx`` are installed (not dependencies of
qsmnet: ``pip install onnxruntime onnx``); torch.compile needs a C++ compiler on the CPU.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def _timed(fn, sync) -> float:
    t = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t


def main() -> None:
    import torch

    from qsmnet.models.io import load_network
    from qsmnet.models.unet import channels_last

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--method", default="unet_head", help="shipped U-Net network (default unet_head)")
    p.add_argument("--size", type=int, default=160, help="volume edge in voxels (default 160)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile (its first call: ~1 min)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    net, _ = load_network(args.method)
    body = getattr(net, "unet", None)
    if body is None:
        raise SystemExit(f"{args.method} has no U-Net body (.unet) to time")
    body = body.eval().to(dev)
    n = args.size
    x = channels_last(torch.randn(1, 3, n, n, n, generator=torch.Generator().manual_seed(0)).to(dev))

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    runs = {"eager (channels_last)": lambda: body(x), "eager (contiguous)": lambda: body(x.contiguous())}
    if dev.type == "cuda":
        def amp():
            with torch.autocast("cuda", dtype=torch.float16):
                return body(x)

        runs["eager + AMP float16"] = amp
    first = {}
    with torch.inference_mode():
        ref = body(x).float()
        if not args.no_compile:
            compiled = torch.compile(body)
            first["torch.compile"] = _timed(lambda: compiled(x), sync)  # compiles on the first call
            runs["torch.compile"] = lambda: compiled(x)
        if dev.type == "cpu":
            try:
                import onnxruntime as ort
            except ImportError:
                print("onnxruntime not installed: ONNX Runtime not measured (pip install onnxruntime onnx)")
            else:
                path = Path(tempfile.mkdtemp()) / "body.onnx"
                axes = {0: "b", 2: "x", 3: "y", 4: "z"}
                t = time.perf_counter()
                torch.onnx.export(body, (x.contiguous(),), path, input_names=["x"], output_names=["y"],
                                  dynamic_axes={"x": axes, "y": axes}, dynamo=False)  # fmt: skip
                so = ort.SessionOptions()
                so.intra_op_num_threads, so.inter_op_num_threads = args.threads, 1
                sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
                first["onnxruntime"] = time.perf_counter() - t
                xn = x.contiguous().numpy()
                runs["onnxruntime"] = lambda: torch.from_numpy(sess.run(None, {"x": xn})[0])
        times = {k: [] for k in runs}
        diffs = {}
        for _ in range(args.repeats):
            for k, fn in runs.items():
                t = time.perf_counter()
                y = fn()
                sync()
                times[k].append(time.perf_counter() - t)
                diffs[k] = float((y.float() - ref).abs().max())
    eager = statistics.median(times["eager (channels_last)"])
    print(f"{args.method} body, {n}^3, {args.device}, {args.threads} thread(s), median of {args.repeats}:")
    print(f"{'backend':24s} {'median s':>9s} {'vs eager':>9s} {'max |diff|':>11s} {'setup s':>8s}")
    for k, ts in times.items():
        med = statistics.median(ts)
        setup = f"{first[k]:8.1f}" if k in first else f"{'-':>8s}"
        print(f"{k:24s} {med:9.2f} {med / eager:8.2f}x {diffs[k]:11.1e} {setup}")


if __name__ == "__main__":
    main()
