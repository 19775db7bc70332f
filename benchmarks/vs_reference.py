"""Training speed of histlib's GAN beside NVIDIA's StyleGAN2-ADA (the reference), at equal architecture.

The reference is not part of this project (its licence is non-commercial): bring a snapshot of
``NVlabs/stylegan2-ada-pytorch`` and point ``--reference-dir`` at it. Nothing of it is copied; it is imported from
that folder at run time.

One timed iteration is, for both, what their training loops do per minibatch with lazy regularisation: G main
(non-saturating loss through the augmentation; D2D-CE off in ours, so the conditional parts differ only in the
discriminator's class head), G reg (path length) every 4 iterations, D main every iteration, D reg (R1) every 16,
the EMA of G, and the augmentation ('bgc') at a fixed p. Each implementation runs in its own subprocess on the same
synthetic batch shapes; a few warm-up iterations are excluded, then whole ticks of 16 iterations are timed.
Printed per configuration: images/s, s/kimg, peak memory, parameter counts, and the ratio ours/reference.

Equal architecture is checked, not assumed: the parameter counts of G and D without their class-conditioning
tensors (ours: G's label embedding, D's output layer, embedding head and proxies; the reference: G's label
embedding, D's label mapping network and its projection output layer) must be equal, or the run fails.

Patches applied to the reference at run time: none were needed with torch 2.14 on the CPU (its custom ops fall
back to their reference paths there); on a GPU its ``conv2d_gradfix`` and ``grid_sample_gradfix`` warn that they
do not know today's PyTorch and use the standard operators, as they do in any current installation.

Usage::

    python benchmarks/vs_reference.py --reference-dir ../stylegan2-ada-pytorch               # CPU: 32 and 64 px
    python benchmarks/vs_reference.py --reference-dir REF --device cuda --res 64 256 --batch 32 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROFILE_FOR_RES = {32: "demo", 64: "reduced", 128: "reduced", 256: "paper"}
TICK = 16  # iterations: one R1 step and four path-length steps per tick


def _arch(res: int, device: str) -> dict:
    """The architecture both sides build: our profile's networks at ``res`` (fp16 only on a GPU)."""
    sys.path.insert(0, str(ROOT))
    from histlib.gan.config import PROFILES, network_kwargs

    profile = PROFILE_FOR_RES[res]
    kw = network_kwargs(profile, resolution=res)
    train = PROFILES[profile]["train"]
    fp16 = kw["G"]["num_fp16_res"] if device == "cuda" else 0
    return dict(profile=profile, res=res, z_dim=kw["G"]["z_dim"], w_dim=kw["G"]["w_dim"],
                mapping_layers=kw["G"]["mapping_layers"], channel_base=kw["G"]["channel_base"],
                channel_max=kw["G"]["channel_max"], num_fp16_res=fp16, conv_clamp=kw["G"]["conv_clamp"],
                mbstd_group_size=kw["D"]["mbstd_group_size"], r1_gamma=train["r1_gamma"])


# ----------------------------------------------------------------------------------------------------------------
# The two sides (each runs in its own subprocess)


def _count(module, skip: tuple[str, ...]) -> tuple[int, int]:
    total = sum(p.numel() for p in module.parameters())
    core = sum(p.numel() for n, p in module.named_parameters() if not n.startswith(skip))
    return total, core


def _ours(a: dict, batch: int, num_classes: int, device: str, impl: str, data=None, p: float = 0.2,
          cond_lambda: float | None = None, overrides: dict | None = None, seed: int = 0):
    """histlib's state, one-iteration function (the phases of ``histlib.gan.phases``, EMA) and ``G_ema`` sampler.

    ``data``: None (one fixed random batch: the speed benchmark) or a callable giving ``(images in [-1, 1], int
    labels)`` per iteration (learning runs: D2D-CE on, as configured by the profile); ``overrides``: further
    ``TrainConfig`` values of learning runs (e.g. ``{"D_kwargs": {"cond_projection": true}}``); ``seed``: the
    config's seed, from which ``build_state`` draws the initial weights, the latents and the synthesis noise (a
    ``seed`` in ``overrides`` wins)."""
    import tempfile

    import numpy as np
    from PIL import Image

    sys.path.insert(0, str(ROOT))
    import torch

    from histlib import ops
    from histlib.data.dataset import ImageDataset, to_uint8_tensor
    from histlib.gan.config import TrainConfig
    from histlib.gan.distributed import Dist
    from histlib.gan.phases import phases
    from histlib.gan.state import Meter, build_state

    folder = Path(tempfile.mkdtemp())
    rng = np.random.default_rng(0)
    for k in range(num_classes):
        (folder / f"c{k}").mkdir()
        for i in range(4):
            pixels = rng.integers(0, 255, (a["res"], a["res"], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"c{k}/{i}.png")
    # speed runs (no data) leave the conditional loss out; learning runs use the profile's weight or ``cond_lambda``
    extra = {"cond_lambda": 0.0} if data is None else ({} if cond_lambda is None else {"cond_lambda": cond_lambda})
    extra["seed"] = seed
    if data is not None:
        extra.update(overrides or {})
    # the shared settings first; a learning run's overrides may change any of them on our side (R1 γ, for one)
    settings = dict(data_dir=str(folder), resolution=a["res"], batch_size=batch, device=device, augment="fixed",
                    augment_p=p, kernel_impl=impl, mixed_precision=a["num_fp16_res"] > 0, r1_gamma=a["r1_gamma"],
                    progress=False, class_check_per_class=0)
    cfg = TrainConfig.from_profile(a["profile"], **{**settings, **extra})
    dataset = ImageDataset(folder, transform=to_uint8_tensor)
    ops.set_default_impl(impl)
    state = build_state(cfg, dataset, num_classes, torch.device(device), Dist(), None)
    meter = Meter(torch.device(device))
    real = torch.rand(batch, 3, a["res"], a["res"], device=device) * 2 - 1
    real_c = torch.randint(num_classes, (batch,), device=device)
    schedule = phases(state)

    def iteration():
        x, c = (real, real_c) if data is None else (t.to(device) for t in data())
        for _, phase, interval in schedule:
            if state.step % interval == 0:
                phase(state, x, c, meter)
        state.update_ema()
        state.cur_nimg += batch
        state.step += 1

    @torch.no_grad()
    def sample(z, c, noise_mode="const"):  # int labels
        return state.G_ema(z, c, noise_mode=noise_mode)

    counts = {"G": _count(state.G, ("mapping.embed",)),
              "D": _count(state.D, ("out.", "embed.", "proxies.", "projection."))}
    return iteration, counts, sample


REFERENCE_LOSS = {"style_mixing_prob": 0.9, "pl_weight": 2.0}
"""The reference's loss settings the harness uses unless told otherwise: its loss's defaults, which every
configuration of its train.py keeps but ``cifar`` (meant for 32 px), which sets both to 0."""


REFERENCE_LR = 0.0025
"""The reference's learning rate (G and D, Adam), as its ``train.py`` sets it below 1024 px; ``--ref-set lr=...``
changes it."""


def reference_loss_kwargs(a: dict, overrides: dict | None = None) -> dict:
    """Keyword arguments of the reference's ``StyleGAN2Loss``: :data:`REFERENCE_LOSS` and R1 γ from the shared
    architecture ``a``, with ``overrides`` (only ``style_mixing_prob``, ``pl_weight``, ``r1_gamma`` and ``lr``, the
    last read by :func:`reference_lr`; another key is named in the error)."""
    allowed = {"style_mixing_prob", "pl_weight", "r1_gamma", "lr"}
    bad = sorted(set(overrides or {}) - allowed)
    if bad:
        raise SystemExit(f"--ref-set {', '.join(bad)}: the reference side takes only {', '.join(sorted(allowed))}")
    out = {**REFERENCE_LOSS, "r1_gamma": a["r1_gamma"], "lr": REFERENCE_LR, **(overrides or {})}
    for key, value in out.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0 or (key == "lr" and value == 0):
            raise SystemExit(f"--ref-set {key}={value!r}: expected a number {'> 0' if key == 'lr' else '>= 0'}")
    return {k: float(v) for k, v in out.items() if k != "lr"}


def reference_lr(overrides: dict | None = None) -> float:
    """The reference's learning rate: ``overrides['lr']`` (checked by :func:`reference_loss_kwargs`) or
    :data:`REFERENCE_LR`."""
    return float((overrides or {}).get("lr", REFERENCE_LR))


def _reference(a: dict, batch: int, num_classes: int, device: str, impl: str, ref_dir: str, data=None,
               p: float = 0.2, ema_kimg: float = 2.0, ema_rampup: float | None = None, labels=None,
               loss_overrides: dict | None = None):
    """The reference's networks, loss and augmentation, stepped as its training loop does (``data``, ``p``: as
    :func:`_ours`; ``labels``: the training labels, from which its loop draws the generated images' classes;
    ``loss_overrides``: see :func:`reference_loss_kwargs`, its ``lr`` the learning rate)."""
    loss_kwargs = reference_loss_kwargs(a, loss_overrides)
    lr = reference_lr(loss_overrides)
    sys.path.insert(0, ref_dir)
    import copy

    import torch

    # the reference's own modules, from --reference-dir
    from torch_utils import misc  # noqa: F401
    from torch_utils.ops import bias_act, upfirdn2d  # noqa: F401
    from training.augment import AugmentPipe
    from training.loss import StyleGAN2Loss
    from training.networks import Discriminator, Generator

    dev = torch.device(device)
    common = dict(channel_base=a["channel_base"], channel_max=a["channel_max"], num_fp16_res=a["num_fp16_res"],
                  conv_clamp=a["conv_clamp"])
    G = Generator(z_dim=a["z_dim"], c_dim=num_classes, w_dim=a["w_dim"], img_resolution=a["res"], img_channels=3,
                  mapping_kwargs=dict(num_layers=a["mapping_layers"]), synthesis_kwargs=common)
    D = Discriminator(c_dim=num_classes, img_resolution=a["res"], img_channels=3, architecture="resnet",
                      epilogue_kwargs=dict(mbstd_group_size=a["mbstd_group_size"]), **common)
    G, D = G.train().requires_grad_(False).to(dev), D.train().requires_grad_(False).to(dev)
    G_ema = copy.deepcopy(G).eval()
    pipe = AugmentPipe(xflip=1, rotate90=1, xint=1, scale=1, rotate=1, aniso=1, xfrac=1, brightness=1, contrast=1,
                       lumaflip=1, hue=1, saturation=1).train().requires_grad_(False).to(dev)
    pipe.p.copy_(torch.as_tensor(p))
    loss = StyleGAN2Loss(device=dev, G_mapping=G.mapping, G_synthesis=G.synthesis, D=D, augment_pipe=pipe,
                         pl_batch_shrink=2, **loss_kwargs)
    phases = []
    for name, module, interval in (("G", G, 4), ("D", D, 16)):
        ratio = interval / (interval + 1)
        opt = torch.optim.Adam(module.parameters(), lr=lr * ratio, betas=(0.0, 0.99 ** ratio), eps=1e-8)
        phases += [(name + "main", module, opt, 1), (name + "reg", module, opt, interval)]
    real = torch.rand(batch, 3, a["res"], a["res"], device=dev) * 2 - 1
    real_c = torch.nn.functional.one_hot(torch.randint(num_classes, (batch,)), num_classes).float().to(dev)
    step = [0]
    one_hot = torch.nn.functional.one_hot

    def iteration():
        nonlocal real, real_c
        if data is not None:
            x, c = data()
            real, real_c = x.to(dev), one_hot(c, num_classes).float().to(dev)
        drawn = torch.randint(num_classes, (batch,)) if labels is None else \
            torch.as_tensor(labels)[torch.randint(len(labels), (batch,))]
        gen_c = one_hot(drawn, num_classes).float().to(dev)
        for name, module, opt, interval in phases:
            if step[0] % interval != 0:
                continue
            opt.zero_grad(set_to_none=True)
            module.requires_grad_(True)
            gen_z = torch.randn([batch, G.z_dim], device=dev)
            loss.accumulate_gradients(phase=name, real_img=real, real_c=real_c, gen_z=gen_z, gen_c=gen_c,
                                      sync=True, gain=interval)
            module.requires_grad_(False)
            for param in module.parameters():
                if param.grad is not None:
                    misc.nan_to_num(param.grad, nan=0, posinf=1e5, neginf=-1e5, out=param.grad)
            opt.step()
        with torch.no_grad():
            ema_nimg = ema_kimg * 1000 if ema_rampup is None else min(ema_kimg * 1000, step[0] * batch * ema_rampup)
            beta = 0.5 ** (batch / max(ema_nimg, 1e-8))
            for p_ema, p in zip(G_ema.parameters(), G.parameters()):
                p_ema.copy_(p.lerp(p_ema, beta))
            for b_ema, b in zip(G_ema.buffers(), G.buffers()):
                b_ema.copy_(b)
        step[0] += 1

    @torch.no_grad()
    def sample(z, c, noise_mode="const"):  # int labels
        return G_ema(z, one_hot(c, num_classes).float().to(dev), noise_mode=noise_mode)

    counts = {"G": _count(G, ("mapping.embed",)), "D": _count(D, ("mapping.", "b4.out."))}
    return iteration, counts, sample


def child(side: str, res: int, batch: int, ticks: int, device: str, impl: str, ref_dir: str, warmup: int) -> dict:
    import torch

    torch.manual_seed(0)
    a = _arch(res, device)
    if side == "ours":
        iteration, counts, _ = _ours(a, batch, 5, device, impl)
    else:
        iteration, counts, _ = _reference(a, batch, 5, device, impl, ref_dir)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    for _ in range(warmup):
        iteration()
    sync()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(ticks):
        t0 = time.perf_counter()
        for _ in range(TICK):
            iteration()
        sync()
        times.append(time.perf_counter() - t0)
    imgs = TICK * batch
    best = min(times)
    return {
        "side": side, "res": res, "batch": batch, "device": device, "impl": impl, "ticks": ticks,
        "img_per_s_median": round(imgs / sorted(times)[len(times) // 2], 2), "img_per_s_best": round(imgs / best, 2),
        "s_per_kimg_median": round(sorted(times)[len(times) // 2] / imgs * 1000, 2),
        "peak_mem_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if device == "cuda"
        else round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_growth_mb": round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024, 1),
        "params": counts, "arch": a, "torch": torch.__version__, "threads": torch.get_num_threads(),
    }


# ----------------------------------------------------------------------------------------------------------------
# The driver


def run_side(side: str, args, res: int) -> dict:
    cmd = [sys.executable, __file__, "--_child", side, "--res", str(res), "--batch", str(args.batch or
           {32: 16, 64: 32}.get(res, 32)), "--ticks", str(args.ticks), "--device", args.device, "--impl", args.impl,
           "--reference-dir", str(args.reference_dir), "--warmup", str(args.warmup)]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env, cwd=str(ROOT))
    except subprocess.TimeoutExpired:
        return {"side": side, "res": res, "error": f"timed out after {args.timeout} s"}
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        tail = (out.stderr or out.stdout).strip().splitlines()[-3:]
        return {"side": side, "res": res, "error": " | ".join(tail)}
    return json.loads(lines[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference-dir", type=Path, help="a snapshot of NVlabs/stylegan2-ada-pytorch")
    p.add_argument("--res", type=int, nargs="+", default=[32, 64])
    p.add_argument("--batch", type=int, default=None, help="default 16 at 32 px, 32 above")
    p.add_argument("--ticks", type=int, default=3, help="timed ticks of 16 iterations")
    p.add_argument("--warmup", type=int, default=4, help="iterations before timing")
    p.add_argument("--repeats", type=int, default=2, help="alternating runs of each side")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--impl", default=None, help="kernel path of both: ref (CPU default) or cuda")
    p.add_argument("--timeout", type=int, default=900)
    p.add_argument("--json", default=None)
    p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    args.impl = args.impl or ("cuda" if args.device == "cuda" else "ref")
    if args._child:
        print(json.dumps(child(args._child, args.res[0], args.batch, args.ticks, args.device, args.impl,
                               str(args.reference_dir), args.warmup)))
        return 0
    if args.reference_dir is None or not (args.reference_dir / "training" / "networks.py").is_file():
        print("error: --reference-dir must be a snapshot of NVlabs/stylegan2-ada-pytorch (training/networks.py)",
              file=sys.stderr)
        return 2
    results, failed = [], False
    for res in args.res:
        runs = {"ours": [], "reference": []}
        for r in range(args.repeats):
            for side in (("ours", "reference") if r % 2 == 0 else ("reference", "ours")):
                runs[side].append(run_side(side, args, res))
        for side, items in runs.items():
            for item in items:
                if "error" in item:
                    print(f"{side} {res} px: {item['error']}", file=sys.stderr)
                    failed = True
        ok = {s: [i for i in items if "error" not in i] for s, items in runs.items()}
        if ok["ours"] and ok["reference"]:
            po, pr = ok["ours"][0]["params"], ok["reference"][0]["params"]
            equal = po["G"][1] == pr["G"][1] and po["D"][1] == pr["D"][1]
            speed = {s: max(i["img_per_s_median"] for i in items) for s, items in ok.items()}
            results.append({"res": res, "ours": ok["ours"], "reference": ok["reference"], "equal_core_params": equal,
                            "ratio_ours_over_reference": round(speed["ours"] / speed["reference"], 3)})
            failed |= not equal
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; device {args.device}; "
          f"kernels {args.impl}")
    print(f"{'res':>4} {'side':<10} {'batch':>5} {'img/s':>8} {'s/kimg':>8} {'peak MB':>9} {'G params (core)':>22} "
          f"{'D params (core)':>22}")
    for r in results:
        for side in ("ours", "reference"):
            best = max(r[side], key=lambda i: i["img_per_s_median"])
            g, d = best["params"]["G"], best["params"]["D"]
            print(f"{r['res']:>4} {side:<10} {best['batch']:>5} {best['img_per_s_median']:>8.1f} "
                  f"{best['s_per_kimg_median']:>8.1f} {best['peak_mem_mb']:>9.0f} {g[0]:>12,} ({g[1]:>8,}) "
                  f"{d[0]:>12,} ({d[1]:>8,})")
        print(f"{r['res']:>4} ratio ours/reference: {r['ratio_ours_over_reference']:.3f}"
              f"{'' if r['equal_core_params'] else '   ARCHITECTURES DIFFER'}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
