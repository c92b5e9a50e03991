"""posterior-nas benchmarks (issue 9), each printed as a markdown table.

1. search: the `tiny` preset on cifar10-mini, end to end (train the hybrid representation, score
   C = 100 posterior masks and C = 100 uniform masks at the posterior's mean drop rate), per seed:
   wall time (target: < 10 min on this CPU), best-of-100 held-out accuracy of posterior vs uniform
   sampling (both winners picked by the same rule on the held-out split), the two winners' accuracy on
   cifar10-mini's test split (independent of the pick, so free of its selection bias), and the found
   network's size.
2. scoring: 1,000 posterior masks scored on 500 held-out images with the inherited weights of the
   tiny supernet (target: < 2 min on this CPU), folded several masks per forward where the batch allows.
3. kendall (optional, --kendall N): Kendall's tau between inherited-weight and stand-alone accuracy
   (short training from scratch) of N masks sampled from the posterior.

    python packages/posterior-nas/benchmarks/bench_posterior.py [--seeds 0 1 2] [--jobs 1] [--masks 1000]
                                                                [--images 500] [--kendall 0]
"""
from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import torch

from nas_common import Task, get_dataset
from nas_common.benchmarking import markdown_table
from nas_common.config import config_from_dict, resolve_config
from nas_common.data import make_loader
from nas_common.runs import provenance
from nas_common.search import run_search
from posterior_nas import PosteriorConfig, channel_rates, get_supnet_space, kendall_tau, score_masks, supernet_net
from posterior_nas.sampling import sample_masks


def _supernet_from_run(run_dir: Path, task: Task):  # noqa: ANN202
    """The trained supernet of a search run (its config from the checkpoint)."""
    state = torch.load(run_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)
    cfg = config_from_dict(PosteriorConfig, state["config"])
    space = get_supnet_space(cfg.space)
    net = supernet_net(cfg, task)
    sup = space.supernet(net, p_init=cfg.p_init, temperature=cfg.temperature)
    sup.load_state_dict(state["model"])
    return space, net, sup.eval(), cfg


def search_one(seed: int, out: Path, overrides: dict[str, str], threads: int) -> dict:
    """One tiny-preset search (run in a worker process when --jobs > 1)."""
    torch.set_num_threads(threads)
    run_dir = out / f"tiny-seed{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)
    t0, c0 = time.perf_counter(), time.process_time()
    result, arch = run_search("posterior-nas", Task(get_dataset("cifar10-mini"), seed=seed), out=run_dir,
                              preset="tiny", overrides=overrides, progress=False)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    _, held = get_dataset("cifar10-mini").train.split(1.0 - result.config["val_fraction"], seed=seed)
    m = result.metrics
    test = _winners_on_test(run_dir, result.state)
    return {"seed": seed, "wall_s": wall, "cpu_s": cpu, "train_s": wall - m["sampling_time_s"], "run_dir": run_dir,
            **m, **test, "held_images": len(held), "macs": arch.costs["macs"], "params": arch.costs["params"]}


def _winners_on_test(run_dir: Path, state: dict) -> dict[str, float]:
    """Test-split accuracy (inherited weights) of the posterior's and the uniform baseline's winners: the
    winners were picked on the held-out split, so their held-out scores carry a selection bias that an
    independent split does not."""
    if "uniform_best_mask" not in state:
        return {}
    data = get_dataset("cifar10-mini")
    _, _, sup, _ = _supernet_from_run(run_dir, Task(data))
    test = list(make_loader(data.test, 500, train=False))
    masks = torch.stack([state["best_mask"], state["uniform_best_mask"]])
    acc, _ = score_masks(sup, masks, test, fold=1000)
    return {"best_test_acc": float(acc[0]), "uniform_best_test_acc": float(acc[1])}


def bench_search(seeds: list[int], out: Path, overrides: dict[str, str], threads: int, jobs: int) -> list[dict]:
    if jobs <= 1:
        return [search_one(s, out, overrides, threads) for s in seeds]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(search_one, s, out, overrides, threads) for s in seeds]
        return [f.result() for f in futures]


def bench_scoring(run_dir: Path | None, n_masks: int, n_images: int, fold: int) -> dict:
    data = get_dataset("cifar10-mini")
    task = Task(data)
    if run_dir is not None and (run_dir / "checkpoints" / "last.pt").exists():
        space, net, sup, _ = _supernet_from_run(run_dir, task)
        source = "trained (tiny, seed 0)"
    else:
        cfg = resolve_config(PosteriorConfig, "tiny")
        space = get_supnet_space(cfg.space)
        net = supernet_net(cfg, task)
        sup = space.supernet(net).eval()
        source = "untrained"
    held = list(make_loader(data.test.head(n_images), n_images, train=False))
    masks = sample_masks(channel_rates(sup).detach(), n_masks, torch.Generator().manual_seed(0))
    score_masks(sup, masks[:2], held, fold=fold)  # warm-up
    t0, c0 = time.perf_counter(), time.process_time()
    acc, _ = score_masks(sup, masks, held, fold=fold)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    macs, _ = sup.plan.costs(torch.ones(1, sup.plan.num_channels, dtype=torch.bool))
    return {"masks": n_masks, "images": n_images, "fold": fold, "supernet": source, "time_s": dt, "cpu_s": cpu,
            "masks_per_s": n_masks / dt, "image_evals_per_s": n_masks * n_images / dt,
            "supernet_macs": float(macs[0]), "best_acc": float(acc.max()), "mean_acc": float(acc.mean())}


def bench_kendall(run_dir: Path, n: int, epochs: int) -> dict:
    data = get_dataset("cifar10-mini")
    task = Task(data)
    space, net, sup, cfg = _supernet_from_run(run_dir, task)
    train, held_split = data.train.split(1.0 - cfg.val_fraction, seed=0)
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


nan = float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--masks", type=int, default=1000)
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--fold", type=int, default=500, help="folded batch (masks x images) when scoring")
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
        rows = bench_search(args.seeds, args.out, overrides, args.threads, args.jobs)
        first_run = rows[0]["run_dir"]
        print(f"## tiny preset on cifar10-mini: search time and posterior vs uniform best-of-{rows[0]['samples']}\n")
        print(markdown_table(
            ["seed", "wall (s)", "CPU (s)", "train (s)", "sampling (s)", "p mean", "posterior best acc",
             "uniform best acc", "posterior best, test", "uniform best, test", "posterior mean acc",
             "uniform mean acc", "found MACs", "found params"],
            [[r["seed"], r["wall_s"], r["cpu_s"], r["train_s"], r["sampling_time_s"], r["p_mean"], r["best_acc"],
              r.get("uniform_best_acc", nan), r.get("best_test_acc", nan), r.get("uniform_best_test_acc", nan),
              r["mean_acc"], r.get("uniform_mean_acc", nan), r["macs"], r["params"]] for r in rows]))
        wins = sum(r["best_acc"] > r.get("uniform_best_acc", 1.0) for r in rows)
        wins_test = sum(r.get("best_test_acc", 0.0) > r.get("uniform_best_test_acc", 1.0) for r in rows)
        print(f"\nposterior best-of-N better than uniform on {wins}/{len(rows)} seeds on the held-out split "
              f"that picks the winners ({rows[0]['held_images']} images), {wins_test}/{len(rows)} on the "
              f"independent test split (500 images); max wall time {max(r['wall_s'] for r in rows):.0f} s "
              f"(target < 600 s)\n")
    elif (args.out / "tiny-seed0").exists():
        first_run = args.out / "tiny-seed0"

    s = bench_scoring(first_run, args.masks, args.images, args.fold)  # images: cifar10-mini's test split
    print(f"## scoring {s['masks']} masks on {s['images']} held-out images (inherited weights, no fine-tuning)\n")
    print(markdown_table(["supernet", "supernet MACs", "fold", "wall (s)", "CPU (s)", "masks/s", "image-evals/s",
                          "best acc", "mean acc"],
                         [[s["supernet"], s["supernet_macs"], s["fold"], s["time_s"], s["cpu_s"], s["masks_per_s"],
                           s["image_evals_per_s"], s["best_acc"], s["mean_acc"]]]))
    print(f"\ntarget < 120 s: {'met' if s['time_s'] < 120 else 'NOT met'} (wall); CPU time {s['cpu_s']:.0f} s "
          f"(what an otherwise idle core would need, at {args.threads} thread(s)); load average now "
          f"{os.getloadavg()[0]:.1f}\n")

    if args.kendall and first_run is not None:
        k = bench_kendall(first_run, args.kendall, args.kendall_epochs)
        print(f"## Kendall's tau, inherited vs stand-alone ({args.kendall_epochs} epochs) accuracy, "
              f"{args.kendall} distinct posterior networks\n")
        print(markdown_table(["tau", "p-value", "time (s)"], [[k["tau"], k["p_value"], k["time_s"]]]))
        print()
        print(markdown_table(["mask", "inherited acc", "stand-alone acc"],
                             [[i, a, b] for i, (a, b) in enumerate(zip(k["inherited"], k["standalone"], strict=True))]))


if __name__ == "__main__":
    main()
