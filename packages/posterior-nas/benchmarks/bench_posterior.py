"""posterior-nas benchmarks, each printed as a markdown table.

1. baselines (the paper's Table 3 at the `tiny` scale, cifar10-mini), per seed, then mean +- std over
   seeds. Every winner is a best-of-C pick on the held-out part of the training split, scored with
   the weights it inherits from its supernet, and reported on cifar10-mini's 500 test images, which
   took no part in training or choosing:
   * posterior: the `tiny` search (learned drop rates), its best of C posterior masks; the run's model,
     so this column is what `nas eval RUN_DIR --dataset cifar10-mini` prints (checked here);
   * uniform: C masks at the posterior's channel-weighted mean drop rate, same supernet, same rule;
   * random w/o FT: the paper's "Random" baseline, a second `tiny` search with `drop_rates=fixed`
     (predefined dropout, not learnt; by default at the posterior run's mean drop rate, so that the
     sampled networks have about the same size, as the paper matches the baseline's size), its best of C;
   * random w/ FT: that winner fine-tuned for --finetune-epochs on the training part;
   * posterior w/ FT: the posterior winner fine-tuned the same way (the paper's Table 5 dagger).
2. scoring: 1,000 posterior masks scored on 500 images with the inherited weights of the tiny supernet
   (target: < 60 s on this CPU), folded several masks per forward where the batch allows.
3. kendall (optional, --kendall N): Kendall's tau between inherited-weight and stand-alone accuracy
   (short training from scratch) of N masks sampled from the posterior.

    python packages/posterior-nas/benchmarks/bench_posterior.py [--seeds 0 1 2 3 4] [--jobs 1] [--masks 1000]
        [--images 500] [--finetune-epochs 10] [--fixed-p match|P] [--kendall 0] [--layout nhwc|nchw] [-o KEY=VALUE ...]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time
from pathlib import Path

import torch

from nas_common import Task, get_dataset
from nas_common.benchmarking import markdown_table
from nas_common.config import resolve_config
from nas_common.data import make_loader
from nas_common.runs import load_model, provenance
from nas_common.search import run_search
from nas_common.train import evaluate
from posterior_nas import (
    PosteriorConfig,
    PosteriorSearch,
    channel_rates,
    finetune,
    get_supnet_space,
    held_out_split,
    kendall_tau,
    score_masks,
    supernet_net,
)
from posterior_nas.sampling import sample_masks

DATA = "cifar10-mini"


def _supernet_from_run(run_dir: Path, task: Task):  # noqa: ANN202
    """The trained supernet of a search run and its resolved config (checked against the task)."""
    sup, cfg, _ = PosteriorSearch().load_supernet(run_dir, task)
    return get_supnet_space(cfg.space), supernet_net(cfg, task), sup.eval(), cfg


def _test_acc(sup: torch.nn.Module, masks: torch.Tensor) -> list[float]:
    """Inherited-weight accuracy of masks on the test split (which no pick saw)."""
    test = list(make_loader(get_dataset(DATA).test, 500, train=False))
    acc, _ = score_masks(sup, masks, test, fold=1000)
    return [float(a) for a in acc]


def _finetuned_test_acc(run_dir: Path, task: Task, cfg: PosteriorConfig, epochs: int) -> float:
    """The run's model (the winner with inherited weights) fine-tuned on the training part, on the test split."""
    if epochs <= 0:
        return float("nan")
    train, _, _ = held_out_split(task, cfg)
    model = finetune(load_model(run_dir), train, cfg, task, epochs=epochs)
    return evaluate(model, task.dataset.test, device=task.device)["top1"] / 100.0


def search_one(seed: int, out: Path, overrides: dict[str, str], threads: int, ft_epochs: int,
               fixed_p: str) -> dict:
    """Both searches of one seed and every winner's test accuracy (run in a worker when --jobs > 1)."""
    torch.set_num_threads(threads)
    task = Task(get_dataset(DATA), seed=seed)
    row: dict = {"seed": seed}
    # posterior-guided (and the uniform baseline from the same supernet)
    run_dir = out / f"posterior-seed{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)
    t0 = time.perf_counter()
    result, arch = run_search("posterior-nas", task, out=run_dir, preset="tiny",
                              overrides={**overrides, "uniform_baseline": "true"}, progress=False)
    row["wall_s"] = time.perf_counter() - t0
    m = result.metrics
    _, _, sup, cfg = _supernet_from_run(run_dir, task)
    post_test, uni_test = _test_acc(sup, torch.stack([result.state["best_mask"], result.state["uniform_best_mask"]]))
    # what `nas eval RUN_DIR` prints: the run's model (the winner as a pruned network with inherited weights)
    nas_eval = evaluate(load_model(run_dir), task.dataset.test, device=task.device)["top1"] / 100.0
    row.update(nas_eval=nas_eval, samples=m["samples"], held_images=m["held_out_images"], p_mean=m["p_mean"],
               post_held=m["best_acc"], post_test=post_test, uni_held=m["uniform_best_acc"], uni_test=uni_test,
               post_params=arch.costs["params"], post_macs=arch.costs["macs"],
               post_ft_test=_finetuned_test_acc(run_dir, task, cfg, ft_epochs))
    # the paper's "Random" baseline: a supernet trained with fixed dropout, sampled at that rate
    p = m["p_mean"] if fixed_p == "match" else float(fixed_p)
    p = min(max(p, 0.01), 0.9)
    fixed_dir = out / f"fixed-seed{seed}"
    shutil.rmtree(fixed_dir, ignore_errors=True)
    t0 = time.perf_counter()
    fres, farch = run_search("posterior-nas", task, out=fixed_dir, preset="tiny",
                             overrides={**overrides, "drop_rates": "fixed", "p_init": str(p)}, progress=False)
    row["fixed_wall_s"] = time.perf_counter() - t0
    _, _, fsup, fcfg = _supernet_from_run(fixed_dir, task)
    row.update(fixed_p=p, rand_held=fres.metrics["best_acc"], rand_params=farch.costs["params"],
               rand_test=_test_acc(fsup, fres.state["best_mask"][None])[0],
               rand_ft_test=_finetuned_test_acc(fixed_dir, task, fcfg, ft_epochs))
    return row


def bench_baselines(seeds: list[int], out: Path, overrides: dict[str, str], threads: int, jobs: int,
                    ft_epochs: int, fixed_p: str) -> list[dict]:
    if jobs <= 1:
        return [search_one(s, out, overrides, threads, ft_epochs, fixed_p) for s in seeds]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(search_one, s, out, overrides, threads, ft_epochs, fixed_p) for s in seeds]
        return [f.result() for f in futures]


def bench_scoring(run_dir: Path | None, n_masks: int, n_images: int, fold: int, layout: str = "nhwc") -> dict:
    data = get_dataset(DATA)
    task = Task(data)
    if run_dir is not None and (run_dir / "checkpoints" / "last.pt").exists():
        _, _, sup, _ = _supernet_from_run(run_dir, task)
        source = "trained (tiny, seed 0)"
    else:
        cfg = resolve_config(PosteriorConfig, "tiny")
        sup = get_supnet_space(cfg.space).supernet(supernet_net(cfg, task)).eval()
        source = "untrained"
    held = list(make_loader(data.test.head(n_images), n_images, train=False))
    masks = sample_masks(channel_rates(sup).detach(), n_masks, torch.Generator().manual_seed(0))
    cl = layout == "nhwc"
    score_masks(sup, masks[:2], held, fold=fold, channels_last=cl)  # warm-up
    t0, c0 = time.perf_counter(), time.process_time()
    acc, _ = score_masks(sup, masks, held, fold=fold, channels_last=cl)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    macs, _ = sup.plan.costs(torch.ones(1, sup.plan.num_channels, dtype=torch.bool))
    return {"masks": n_masks, "images": n_images, "fold": fold, "layout": layout, "supernet": source, "time_s": dt,
            "cpu_s": cpu,
            "masks_per_s": n_masks / dt, "image_evals_per_s": n_masks * n_images / dt,
            "supernet_macs": float(macs[0]), "best_acc": float(acc.max()), "mean_acc": float(acc.mean())}


def bench_kendall(run_dir: Path, seed: int, n: int, epochs: int) -> dict:
    task = Task(get_dataset(DATA), seed=seed)
    space, net, sup, cfg = _supernet_from_run(run_dir, task)
    train, held_split, _ = held_out_split(task, cfg)
    held = list(make_loader(held_split, 500, train=False))
    # n distinct networks: posterior draws that differ after the vanishing rule (the posterior may be
    # nearly deterministic, and masks that differ only in vanished channels are the same network)
    draws = sup.plan.effective(sample_masks(channel_rates(sup).detach(), 50 * n, torch.Generator().manual_seed(1)))
    seen: dict[bytes, int] = {}
    for i, row in enumerate(draws.numpy()):
        seen.setdefault(row.tobytes(), i)
    masks = draws[sorted(seen.values())[:n]]
    t0 = time.perf_counter()
    res = kendall_tau(sup, space, net, masks, train, held, epochs=epochs)
    res["time_s"] = time.perf_counter() - t0
    return res


def _mean_std(rows: list[dict], key: str) -> str:
    vals = [r[key] for r in rows if r[key] == r[key]]  # NaN: not measured
    if not vals:
        return "-"
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.fmean(vals):.3f} ± {sd:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--masks", type=int, default=1000)
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--fold", type=int, default=500, help="folded batch (masks x images) when scoring")
    ap.add_argument("--layout", choices=("nhwc", "nchw"), default="nhwc",
                    help="memory format of the scoring (score_masks(channels_last=...))")
    ap.add_argument("--finetune-epochs", type=int, default=10, help="the 'w/ FT' columns (0: skip)")
    ap.add_argument("--fixed-p", default="match",
                    help="drop rate of the fixed-dropout baseline: 'match' (the posterior run's mean rate) or a number")
    ap.add_argument("--kendall", type=int, default=0, help="masks for Kendall's tau (0: skip)")
    ap.add_argument("--kendall-epochs", type=int, default=3)
    ap.add_argument("--skip-search", action="store_true")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads per process (1: these micro networks gain nothing from a second "
                         "thread, and on a shared CPU spin-waiting makes them many times slower)")
    ap.add_argument("--jobs", type=int, default=1, help="seeds searched in parallel processes")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("BENCH_OUT", "runs/bench_posterior")))
    ap.add_argument("-o", "--override", action="append", default=[], help="tiny-preset override KEY=VALUE")
    args = ap.parse_args()
    overrides = dict(o.split("=", 1) for o in args.override)
    torch.set_num_threads(args.threads)
    prov = provenance()
    print(f"# posterior-nas benchmarks ({prov['device_name']}, torch {prov['versions'].get('torch')}, "
          f"git {prov['git_commit']}, {args.threads} torch thread(s), {args.jobs} job(s), "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)\n")

    first_run = None
    if not args.skip_search:
        rows = bench_baselines(args.seeds, args.out, overrides, args.threads, args.jobs, args.finetune_epochs,
                               args.fixed_p)
        first_run = args.out / f"posterior-seed{rows[0]['seed']}"
        r0 = rows[0]
        print(f"## tiny preset on {DATA}: best-of-{r0['samples']} with inherited weights, picked on "
              f"{r0['held_images']} held-out images, reported on the 500 test images (no part in the pick)\n")
        cols = [("posterior", "post_test"), ("uniform", "uni_test"), ("random w/o FT", "rand_test"),
                ("random w/ FT", "rand_ft_test"), ("posterior w/ FT", "post_ft_test")]
        print(markdown_table(
            ["seed", "wall (s)", "p mean", "fixed p", *[f"{c}, test" for c, _ in cols], "posterior, held-out",
             "uniform, held-out", "random, held-out", "posterior params", "random params"],
            [[r["seed"], r["wall_s"] + r["fixed_wall_s"], r["p_mean"], r["fixed_p"], *[r[k] for _, k in cols],
              r["post_held"], r["uni_held"], r["rand_held"], r["post_params"], r["rand_params"]] for r in rows]))
        print()
        print(markdown_table(["", *[f"{c}, test" for c, _ in cols]],
                             [[f"mean ± std ({len(rows)} seeds)", *[_mean_std(rows, k) for _, k in cols]]]))
        beats = {c: sum(r["post_test"] > r[k] for r in rows) for c, k in cols[1:4]}
        same = sum(abs(r["nas_eval"] - r["post_test"]) < 1e-6 for r in rows)  # float32 counts: not exact
        print("\nposterior better on the test images than: "
              + ", ".join(f"{c} on {n}/{len(rows)} seeds" for c, n in beats.items())
              + f"; `nas eval RUN_DIR` equals the posterior column on {same}/{len(rows)} seeds; max wall time of "
              f"one tiny search {max(r['wall_s'] for r in rows):.0f} s\n")
    elif (args.out / "posterior-seed0").exists():
        first_run = args.out / "posterior-seed0"

    # images: cifar10-mini's test split
    s = bench_scoring(first_run, args.masks, args.images, args.fold, args.layout)
    print(f"## scoring {s['masks']} masks on {s['images']} images (inherited weights, no fine-tuning)\n")
    print(markdown_table(["supernet", "supernet MACs", "fold", "layout", "wall (s)", "CPU (s)", "masks/s",
                          "image-evals/s", "best acc", "mean acc"],
                         [[s["supernet"], s["supernet_macs"], s["fold"], s["layout"], s["time_s"], s["cpu_s"],
                           s["masks_per_s"], s["image_evals_per_s"], s["best_acc"], s["mean_acc"]]]))
    target = 60 * max(1, round(s["masks"] * s["images"] / 500_000))
    print(f"\ntarget < {target} s: {'met' if s['time_s'] < target else 'NOT met'} (wall); CPU time {s['cpu_s']:.0f} s "
          f"(at {args.threads} thread(s)); load average now {os.getloadavg()[0]:.1f}\n")

    if args.kendall and first_run is not None:
        k = bench_kendall(first_run, args.seeds[0], args.kendall, args.kendall_epochs)
        print(f"## Kendall's tau, inherited vs stand-alone ({args.kendall_epochs} epochs) accuracy, "
              f"{args.kendall} distinct posterior networks\n")
        print(markdown_table(["tau", "p-value", "time (s)"], [[k["tau"], k["p_value"], k["time_s"]]]))
        print()
        print(markdown_table(["mask", "inherited acc", "stand-alone acc"],
                             [[i, a, b] for i, (a, b) in enumerate(zip(k["inherited"], k["standalone"], strict=True))]))


if __name__ == "__main__":
    main()
