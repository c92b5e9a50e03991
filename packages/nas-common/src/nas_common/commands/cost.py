"""`nas cost NAME|ARCH.json`: MACs (multiply-accumulates, what papers call FLOPs), params, memory, latency."""
from __future__ import annotations

import argparse
from typing import Any

from ..arch import Arch, get_arch, list_archs
from ..cli import command, emit_json
from ..errors import ConfigError


def parse_input(text: str) -> list[int]:
    """'3x32x32' -> [3, 32, 32], or a ConfigError that shows the expected form."""
    parts = text.lower().replace(",", "x").split("x")
    try:
        shape = [int(p) for p in parts]
    except ValueError:
        shape = []
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(f"--input must be CxHxW with positive integers, e.g. 3x32x32, got {text!r}")
    return shape


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("arch", nargs="?", help="a built-in architecture (resnet56, darts-v2, ...: see `nas list`), "
                                           "an arch.json or a run directory")
    p.add_argument("--all", action="store_true", help="a table of every built-in architecture")
    p.add_argument("--input", default=None, metavar="CxHxW",
                   help="input shape to count on, e.g. 3x32x32 (default: the architecture's own)")
    p.add_argument("--latency", action="store_true", help="also measure the median forward latency (batch 1)")
    p.add_argument("--memory", action="store_true", help="also measure weight + peak activation bytes (batch 1)")
    p.add_argument("--device", default="cpu", help="device for --latency/--memory: cpu, cuda, cuda:1 (default cpu)")
    p.add_argument("--repeats", type=int, default=20, help="timed passes for --latency (median; default 20)")
    p.add_argument("--warmup", type=int, default=5, help="untimed passes before timing --latency (default 5)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def arch_costs(arch: Arch, latency: bool = False, memory: bool = False, device: Any = "cpu",
               repeats: int = 20, warmup: int = 5) -> dict[str, Any]:
    """{"macs", "params"} (+ "memory" bytes, "latency" seconds) of `arch` on its net["input"]."""
    from ..costs import check_fits, count_costs, latency_stats, memory_breakdown

    shape = tuple(arch.net["input"])
    counted = count_costs(arch)  # on the meta device: exact, instant, nothing allocated
    out: dict[str, Any] = {"macs": int(counted["macs"]), "params": int(counted["params"])}
    if memory or latency:  # measured on the real device
        from ..device import resolve_device

        dev = resolve_device(device)
        check_fits(counted["params"], dev)
        model = arch.build()
        if memory:
            mem = memory_breakdown(model, shape, 1, dev)
            out["memory"] = mem["total"]
            out["memory_detail"] = mem
        if latency:
            stats = latency_stats(model, shape, 1, dev, warmup=warmup, repeats=repeats)
            out["latency"] = stats["median"]
            out["latency_iqr"] = stats["iqr"]
            out["latency_device"] = str(dev)
    return out


def _fmt(v: float | None, unit: float, suffix: str, digits: int = 2) -> str:
    return "-" if v is None else f"{v / unit:.{digits}f}{suffix}"


def _check(args: argparse.Namespace) -> None:
    if args.repeats < 1 or args.warmup < 0:
        raise ConfigError(f"--repeats must be >= 1 and --warmup >= 0, got {args.repeats} and {args.warmup}")


def _run_all(args: argparse.Namespace) -> int:
    from ..costs.published import PUBLISHED

    rows = []
    for name in list_archs():
        arch = get_arch(name)
        if args.input:
            arch = arch.replace(net={**arch.net, "input": parse_input(args.input)})
        c = arch_costs(arch, latency=args.latency, memory=args.memory, device=args.device, repeats=args.repeats,
                       warmup=args.warmup)
        rows.append({"arch": name, "space": arch.space, "input": arch.net["input"], **c,
                     "published": {k: v for k, v in PUBLISHED.get(name, {}).items() if k in ("macs", "params")}})
    if args.json:
        emit_json(rows)
        return 0
    print("MACs = multiply-accumulates (what papers call FLOPs); published figures in parentheses")
    head = "| arch | space | input | MACs | params |" + (" memory |" if args.memory else "") + \
           (" latency |" if args.latency else "")
    print(head)
    print("|" + "---|" * head.count(" |"))
    for r in rows:
        pub = r["published"]
        line = (f"| {r['arch']} | {r['space']} | {'x'.join(map(str, r['input']))} "
                f"| {_fmt(r['macs'], 1e6, 'M', 1)} ({_fmt(pub.get('macs'), 1e6, 'M', 1)}) "
                f"| {_fmt(r['params'], 1e6, 'M', 3)} ({_fmt(pub.get('params'), 1e6, 'M', 2)}) |")
        if args.memory:
            line += f" {_fmt(r['memory'], 2**20, ' MiB', 1)} |"
        if args.latency:
            line += f" {_fmt(r['latency'], 1e-3, ' ms', 2)} |"
        print(line)
    return 0


@command("cost", "MACs (FLOPs), params, memory and latency of an architecture", arguments)
def run(args: argparse.Namespace) -> int:
    _check(args)
    if args.all:
        if args.arch:
            raise ConfigError("give either an architecture or --all, not both")
        return _run_all(args)
    if not args.arch:
        raise ConfigError(f"name an architecture (one of {', '.join(list_archs())}) or an arch.json, or use --all")
    arch = get_arch(args.arch)
    if args.input:
        arch = arch.replace(net={**arch.net, "input": parse_input(args.input)})
    c = arch_costs(arch, latency=args.latency, memory=args.memory, device=args.device, repeats=args.repeats,
                       warmup=args.warmup)
    if args.json:
        out = {k: c[k] for k in ("macs", "params", "memory", "latency", "latency_iqr") if k in c}
        emit_json(out)
        return 0
    print(f"{args.arch}: {arch.space}: {arch.describe()}")
    print(f"  input  {'x'.join(map(str, arch.net['input']))}, {arch.net['num_classes']} classes")
    print(f"  MACs (multiply-accumulates, what papers call FLOPs): {c['macs']:,} ({c['macs'] / 1e6:.2f}M)")
    print(f"  params: {c['params']:,} ({c['params'] / 1e6:.3f}M)")
    if "memory" in c:
        m = c["memory_detail"]
        print(f"  memory: {m['total'] / 2**20:.2f} MiB = weights {m['weights'] / 2**20:.2f} MiB + activations "
              f"{m['activations'] / 2**20:.2f} MiB (batch 1, {m['device']}, "
              f"{'measured peak' if m['method'] == 'cuda-peak' else 'estimate: sum of layer outputs'})")
    if "latency" in c:
        print(f"  latency: {c['latency'] * 1e3:.3f} ms (median of {args.repeats}, interquartile range "
              f"{c['latency_iqr'] * 1e3:.3f} ms, batch 1, {c['latency_device']})")
    return 0
