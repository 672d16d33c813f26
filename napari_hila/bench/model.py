"""Forward and forward+backward time and memory per model; Sinkhorn against POT.

By default (a couple of minutes) HiLa and ABMIL, the two the goal compares,
and the Sinkhorn comparison; ``--models all`` adds every registered model
that takes cached features (``inputs == "features"``) or defines a
classmethod ``bench_batch(n_patches, n_regions, seed) -> SlideBatch``
(CrossFusion, VPTSurv: minutes each single-threaded; progress goes to
stderr). Each is measured on one synthetic slide (default M = 20,000
patches, R = 80 regions, K = 16 prompts per level, d = 256).

Per-model times are the median (and min, max) over ``--repeats`` runs after
one warm-up. Memory is the growth of the peak resident set size
(``ru_maxrss``) over a pass, each model in a fresh process so one model's
peak does not hide another's; it includes the autograd graph and torch's
allocator caching. Processes run one after another, so load drift moves the
quotients of that table. The head-to-heads are therefore measured side by
side in ONE process and interleaved (A, B, A, B) so drift cancels:
``hila_vs_abmil`` alternates HiLa and ABMIL on the same slide
(forward+backward, then forward only) for ``--repeats`` rounds (default 5)
and reports each model's median, the median, min and max of the per-round
quotient and the goal; ``hila_explanation`` alternates HiLa's no-grad
forward (prediction) with ``model.explain(batch)`` and
``model.explain(batch, resamples=0)``, after ``fit_explanation_baseline``.
Both run on ``--threads`` torch threads (default 1; 0 = torch's own).

Sinkhorn (:func:`compare_sinkhorn`): the same cost matrices (1 - cosine
similarity of random tokens scattered around the prompts), one slide and a
batch, at each ``--eps``, solved by ours and by POT's plain, stabilised and
log-domain ``ot.sinkhorn`` in torch float32, interleaved, at the same eps,
tolerance, iteration cap and error schedule; the answers are checked in
float64 and only converged methods are peers.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import multiprocessing
import resource
import statistics
import sys
import time
import warnings
from queue import Empty
from typing import Any

import numpy as np

from napari_hila.bench.timing import head_to_head, interleave, spread
from napari_hila.devices import configure_torch_threads

# Imported where used, not here: torch, models (torch, 2.7 s) and ot (POT: 3.9 s, it
# loads torch). Every napari-hila command imports this module to build its parser
# (tests/test_startup_imports.py).

DEFAULT_GOALS = {"hila_over_abmil_forward_backward": 3.0}
QUICK_MODELS = ("hila", "abmil")  # the default: minutes, not the heavy comparison models
DEFAULT_REPEATS = 3  # timed runs per model in the per-model table
DEFAULT_ROUNDS = 5  # interleaved rounds in the head-to-heads
DEFAULT_HEAD_TO_HEAD_THREADS = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--patches", type=int, default=20_000, help="patch tokens M (20000)")
    parser.add_argument("--regions", type=int, default=80, help="region tokens R (80)")
    parser.add_argument("--prompts", type=int, default=16, help="prompts K per level (16)")
    parser.add_argument("--width", type=int, default=256, help="shared width d (256)")
    parser.add_argument("--feature-dim", type=int, default=1024, help="encoder width (1024)")
    parser.add_argument("--text-dim", type=int, default=384, help="text embedding width (384)")
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help=f"timed runs per measurement ({DEFAULT_REPEATS}; rounds of the interleaved "
        f"head-to-heads: {DEFAULT_ROUNDS})",
    )
    parser.add_argument(
        "--models",
        nargs="*",
        default=None,
        help=f"model names, or 'all' for every features model (default: {' '.join(QUICK_MODELS)})",
    )
    parser.add_argument("--sinkhorn-batch", type=int, default=8, help="slides in the batch test")
    parser.add_argument(
        "--eps", type=float, nargs="+", default=[0.1, 0.01], help="Sinkhorn eps (0.1 0.01)"
    )
    parser.add_argument("--tol", type=float, default=1e-3, help="Sinkhorn tolerance (1e-3)")
    parser.add_argument(
        "--max-iter",
        type=int,
        default=300,
        help="Sinkhorn iteration cap (300: eps 0.01 needs up to ~210 sweeps here)",
    )
    parser.add_argument("--skip-models", action="store_true", help="only the Sinkhorn comparison")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (per-model table: torch's choice; interleaved head-to-heads: "
        "1; 0: torch's own)",
    )
    parser.add_argument(
        "--memory-limit-gb",
        type=float,
        default=12.0,
        help="address-space cap per model process, so a model that needs more fails with an "
        "error in the JSON instead of waking the system's out-of-memory killer (12)",
    )


def benchmark_models(args: argparse.Namespace) -> list[str]:
    """The models asked for; ``all``: features models plus any with a bench_batch hook."""
    from napari_hila.models import available_models, get_model_spec
    from napari_hila.models.base import MakesBenchBatch

    if not args.models:
        return list(QUICK_MODELS)
    if args.models != ["all"]:
        return list(args.models)
    names = []
    for name in available_models():
        spec = get_model_spec(name)
        if spec.inputs == "features" or isinstance(spec.model_cls, MakesBenchBatch):
            names.append(name)
    return names


def synthetic_slide(n_patches: int, n_regions: int, dim: int, seed: int = 0):
    """Random features on a patch grid, each patch inside one of the regions."""
    from napari_hila.features.store import SlideFeatures

    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n_patches)))
    coords = np.stack([np.arange(n_patches) % side, np.arange(n_patches) // side], 1) * 256
    region_side = max(1, int(np.ceil(np.sqrt(n_regions))))
    region_coords = (
        np.stack([np.arange(n_regions) % region_side, np.arange(n_regions) // region_side], 1)
        * 4096
    )
    return SlideFeatures(
        features=rng.normal(size=(n_patches, dim)).astype(np.float32),
        coords=coords.astype(np.int64),
        region_features=rng.normal(size=(n_regions, dim)).astype(np.float32),
        region_coords=region_coords.astype(np.int64),
        patch_to_region=rng.integers(0, max(n_regions, 1), n_patches).astype(np.int64),
    )


def build_for_bench(name: str, settings: dict[str, Any]):
    """The model with the bench's sizes for every setting its config declares."""
    import torch

    from napari_hila.models import build_model, get_model_spec
    from napari_hila.models.base import NeedsBenchConfig, UsesPrompts

    spec = get_model_spec(name)
    fields = {f.name for f in dataclasses.fields(spec.config_cls)}
    k = settings["prompts"]
    offered: dict[str, Any] = {
        "patch_dim": settings["feature_dim"],
        "region_dim": settings["feature_dim"],
        "text_dim": settings["text_dim"],
        "hidden_dim": settings["width"],
        "n_bins": 4,
    }
    for level in ("patch", "region"):
        offered[f"{level}_prompt_names"] = [f"{level} prompt {i}" for i in range(k)]
        offered[f"{level}_prompt_texts"] = [f"{level} prompt text {i}" for i in range(k)]
    # A model that these sizes alone cannot build (VPTSurv needs a ViT shape) adds its own.
    if isinstance(spec.model_cls, NeedsBenchConfig):
        offered.update(spec.model_cls.bench_config())
    torch.manual_seed(0)
    model = build_model(name, **{key: v for key, v in offered.items() if key in fields})
    if isinstance(model, UsesPrompts):
        rng = np.random.default_rng(1)
        for level in model.prompt_levels():
            model.set_prompt_embeddings(level, rng.normal(size=(k, settings["text_dim"])))
    return model


def _bench_batch(name: str, settings: dict[str, Any]):
    """The model's own synthetic input (``bench_batch``), else one synthetic features slide."""
    from napari_hila.models import collate, get_model_spec
    from napari_hila.models.base import MakesBenchBatch

    cls = get_model_spec(name).model_cls
    if isinstance(cls, MakesBenchBatch):
        return cls.bench_batch(settings["patches"], settings["regions"], 0)
    slide = synthetic_slide(settings["patches"], settings["regions"], settings["feature_dim"])
    return collate([slide])


def _steps(model, batch):
    """``forward()`` (eval, no grad: a prediction) and ``forward_backward()`` (a training step)."""
    import torch

    def forward() -> None:
        model.eval()
        with torch.no_grad():
            model(batch)

    def forward_backward() -> None:
        model.train()
        model.zero_grad(set_to_none=True)
        out = model(batch)
        (out.risk.sum() + out.aux_loss).backward()

    return forward, forward_backward


def _seconds(step, repeats: int) -> list[float]:
    """Seconds of ``repeats`` runs of ``step`` after one warm-up."""
    return interleave({"step": step}, repeats)["step"]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _measure_model(name: str, settings: dict[str, Any], queue) -> None:
    """Runs in a fresh process: time and peak-memory growth of one model."""
    import torch

    try:
        limit = int(settings["memory_limit_gb"] * 1024**3)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        torch.set_num_threads(settings["threads"])
        model = build_for_bench(name, settings)
        batch = _bench_batch(name, settings)
        forward, forward_backward = _steps(model, batch)
        baseline = _peak_rss_mb()
        forward_s = _seconds(forward, settings["repeats"])
        forward_peak = _peak_rss_mb()
        backward_s = _seconds(forward_backward, settings["repeats"])
        backward_peak = _peak_rss_mb()
        queue.put(
            {
                "forward_s": round(statistics.median(forward_s), 4),
                "forward_backward_s": round(statistics.median(backward_s), 4),
                "forward_s_spread": spread(forward_s),
                "forward_backward_s_spread": spread(backward_s),
                "forward_peak_rss_growth_mb": round(forward_peak - baseline, 1),
                "forward_backward_peak_rss_growth_mb": round(backward_peak - baseline, 1),
                "parameters": sum(p.numel() for p in model.parameters()),
            }
        )
    except Exception as err:  # reported in the JSON, the other models still run
        queue.put({"error": f"{type(err).__name__}: {err}"})


def measure_models(names: list[str], settings: dict[str, Any]) -> dict[str, dict]:
    context = multiprocessing.get_context("spawn")
    results = {}
    for number, name in enumerate(names, 1):
        _progress(f"{name} ({number} of {len(names)}), forward and forward+backward")
        started = time.perf_counter()
        queue = context.Queue()
        process = context.Process(target=_measure_model, args=(name, settings, queue))
        process.start()
        process.join()
        if not queue.empty():
            results[name] = queue.get()
        else:
            cause = " (killed: likely out of memory)" if process.exitcode == -9 else ""
            results[name] = {"error": f"process died with exit code {process.exitcode}{cause}"}
        _progress(f"{name} done in {time.perf_counter() - started:.0f} s")
    return results


def interleaved_benchmarks(settings: dict[str, Any], hila: bool, abmil: bool) -> dict[str, Any]:
    """In this process: HiLa vs ABMIL and HiLa's explanation vs prediction, interleaved.

    Sets torch's threads from ``settings["head_to_head_threads"]`` (1 if absent).
    """
    import torch

    threads = configure_torch_threads(
        settings.get("head_to_head_threads", DEFAULT_HEAD_TO_HEAD_THREADS)
    )
    rounds = settings["rounds"]
    out: dict[str, Any] = {
        "torch_threads": threads,
        "torch_interop_threads": torch.get_num_interop_threads(),
        "rounds": rounds,
        "patches": settings["patches"],
    }
    if not hila:
        return out
    model = build_for_bench("hila", settings)
    batch = _bench_batch("hila", settings)
    hila_forward, hila_step = _steps(model, batch)
    if abmil:
        peer = build_for_bench("abmil", settings)
        abmil_forward, abmil_step = _steps(peer, batch)
        goal = DEFAULT_GOALS["hila_over_abmil_forward_backward"]
        step_times = interleave({"hila": hila_step, "abmil": abmil_step}, rounds)
        forward_times = interleave({"hila": hila_forward, "abmil": abmil_forward}, rounds)
        both = {
            "forward_backward": head_to_head("hila", "abmil", step_times, goal),
            "forward": head_to_head("hila", "abmil", forward_times, goal),
        }
        out["hila_vs_abmil"] = {
            **both,
            "goal": f"per-round hila/abmil ratio median <= {goal}",
            "pass": all(part["pass"] for part in both.values()),
        }
        del peer
    out["hila_explanation"] = _explanation_vs_prediction(model, batch, hila_forward, rounds)
    return out


def _explanation_vs_prediction(model, batch, forward, rounds: int) -> dict[str, Any]:
    """Seconds of ``explain`` (with and without the noise floor) beside a no-grad forward."""
    from napari_hila.models.base import ExplainsAgainstBaseline

    baseline_risk = None
    if isinstance(model, ExplainsAgainstBaseline):
        baseline_risk = model.fit_explanation_baseline([batch])
    steps: dict[str, Any] = {"forward": forward, "explain": lambda: model.explain(batch)}
    if "resamples" in inspect.signature(model.explain).parameters:
        steps["explain_resamples_0"] = lambda: model.explain(batch, resamples=0)
    times = interleave(steps, rounds)
    out: dict[str, Any] = {
        "explanation_resamples": getattr(model.config, "explanation_resamples", None),
        "baseline_fitted": baseline_risk is not None,
        "forward_s": round(statistics.median(times["forward"]), 6),
        "forward_rounds_s": [round(t, 6) for t in times["forward"]],
    }
    for label in steps:
        if label == "forward":
            continue
        multiples = [t / f for t, f in zip(times[label], times["forward"], strict=True)]
        out[f"{label}_s"] = round(statistics.median(times[label]), 6)
        out[f"{label}_rounds_s"] = [round(t, 6) for t in times[label]]
        out[f"{label}_over_forward"] = spread(multiples)
        out[f"{label}_over_forward_of_medians"] = round(
            statistics.median(times[label]) / statistics.median(times["forward"]), 4
        )
    if "explain_resamples_0" not in steps:
        out["explain_resamples_0"] = "explain() takes no resamples argument"
    return out


def _measure_interleaved(settings: dict[str, Any], hila: bool, abmil: bool, queue) -> None:
    """Runs in a fresh process: :func:`interleaved_benchmarks` under the memory cap."""
    try:
        limit = int(settings["memory_limit_gb"] * 1024**3)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        queue.put(interleaved_benchmarks(settings, hila, abmil))
    except Exception as err:  # reported in the JSON
        queue.put({"error": f"{type(err).__name__}: {err}"})


def measure_interleaved(settings: dict[str, Any], hila: bool, abmil: bool) -> dict[str, Any]:
    """:func:`interleaved_benchmarks` in one fresh process (its own threads and memory cap)."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_measure_interleaved, args=(settings, hila, abmil, queue))
    process.start()
    result = None
    while result is None:  # read before join: a child with queued data does not exit
        try:
            result = queue.get(timeout=1.0)
        except Empty:
            if not process.is_alive():
                with contextlib.suppress(Empty):
                    result = queue.get(timeout=1.0)
                break
    process.join()
    if result is None:
        cause = " (killed: likely out of memory)" if process.exitcode == -9 else ""
        return {"error": f"process died with exit code {process.exitcode}{cause}"}
    return result


def _sinkhorn_problems(sizes: list[int], n_prompts: int, width: int, seed: int):
    rng = np.random.default_rng(seed)
    prompts = rng.normal(size=(n_prompts, width))
    prompts /= np.linalg.norm(prompts, axis=1, keepdims=True)
    costs = []
    for n in sizes:
        # Tokens scattered around the prompts, so similarities spread as in a
        # trained model (random directions alone give a near-uniform plan).
        nearest = rng.integers(0, n_prompts, n)
        tokens = prompts[nearest] * rng.uniform(0.0, 2.0, (n, 1)) + rng.normal(size=(n, width)) / 16
        tokens /= np.linalg.norm(tokens, axis=1, keepdims=True)
        costs.append(1.0 - tokens @ prompts.T)
    return costs


POT_METHODS = {
    "pot_plain": "sinkhorn",
    "pot_stabilized": "sinkhorn_stabilized",
    "pot_log": "sinkhorn_log",
}
POT_CHECK_EVERY = 10  # POT computes its error after sweeps 1, 11, 21, ...
# A converged plan is within this share of the mean plan entry of POT's log-domain plan.
PLAN_AGREEMENT = 0.01


def _marginal_errors(plan: np.ndarray) -> tuple[float, float]:
    """L2 errors of a plan's row and column sums against uniform, in float64."""
    n, k = plan.shape
    return (
        float(np.linalg.norm(plan.sum(axis=1) - 1.0 / n)),
        float(np.linalg.norm(plan.sum(axis=0) - 1.0 / k)),
    )


def _why_not_timed(quality: dict[str, Any]) -> str:
    if not quality["marginals_met"] or quality["agrees_with_pot_log"] is None:
        return "did not converge"
    return "marginals met, but the plan differs from POT's log-domain plan"


def compare_sinkhorn(
    args: argparse.Namespace, sizes: list[int], eps: float, rounds: int
) -> dict[str, Any]:
    """Ours against POT's plain, stabilised and log-domain Sinkhorn, interleaved.

    Everything in torch float32 at the same eps, tolerance, iteration cap and
    error schedule (checked after sweeps 1, 11, 21, ...: ours with
    ``check_every=10``); ours solves the padded batch in one call as HiLa does,
    POT one slide after another (it has no masked batch). ``ours_every_sweep``
    is ours as HiLa runs it (``check_every=1``: it stops at the first sweep
    within tolerance). Each method's plan is checked afterwards in float64: a
    method whose column error is above the tolerance, whose plan is not finite
    or differs from POT's log-domain plan by more than ``PLAN_AGREEMENT`` of the
    mean entry did not converge, is timed once (its warm-up) and is not a peer.
    """
    import ot
    import torch

    from napari_hila.models.sinkhorn import sinkhorn_log

    costs = _sinkhorn_problems(sizes, args.prompts, args.width, seed=len(sizes))
    n_max = max(sizes)
    padded = np.zeros((len(sizes), n_max, args.prompts), np.float32)
    mask = np.zeros((len(sizes), n_max), bool)
    for b, cost in enumerate(costs):
        padded[b, : len(cost)] = cost
        mask[b, : len(cost)] = True
    cost_t, mask_t = torch.from_numpy(padded), torch.from_numpy(mask)
    costs_t = [torch.from_numpy(c).float() for c in costs]
    marginals = [
        (torch.full((len(c),), 1.0 / len(c)), torch.full((args.prompts,), 1.0 / args.prompts))
        for c in costs
    ]
    solve = {"eps": eps, "max_iter": args.max_iter, "tol": args.tol}

    def ours(check_every: int):
        def step():
            result = sinkhorn_log(cost_t, mask_t, check_every=check_every, **solve)
            plans = [result.plan[b, : len(c)] for b, c in enumerate(costs)]
            return plans, [result.iterations] * len(costs)

        return step

    def pot(method: str):
        extra = {"print_period": POT_CHECK_EVERY} if method == "sinkhorn_stabilized" else {}

        def step():
            plans, sweeps = [], []
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # non-convergence is measured below
                for (a, b), cost in zip(marginals, costs_t, strict=True):
                    plan, log = ot.sinkhorn(
                        a,
                        b,
                        cost,
                        eps,
                        method=method,
                        numItermax=args.max_iter,
                        stopThr=args.tol,
                        log=True,
                        **extra,
                    )
                    plans.append(plan)
                    sweeps.append(int(log.get("niter", log.get("n_iter", -1))) + 1)
                    if not bool(torch.isfinite(plan).all()) or not log["err"][-1] < args.tol:
                        break  # failed on this slide: the others are not tried
            return plans, sweeps

        return step

    steps = {"ours": ours(POT_CHECK_EVERY), "ours_every_sweep": ours(1)}
    steps.update({label: pot(method) for label, method in POT_METHODS.items()})
    quality: dict[str, dict[str, Any]] = {}
    plans_by_method: dict[str, list[np.ndarray]] = {}
    warm_up_s: dict[str, float] = {}
    for label, step in steps.items():  # the warm-up, which also checks the answers
        start = time.perf_counter()
        plans, sweeps = step()
        warm_up_s[label] = round(time.perf_counter() - start, 4)
        plans64 = [p.double().numpy() for p in plans]
        errors = [_marginal_errors(p) for p in plans64]
        finite = all(np.isfinite(p).all() for p in plans64)
        column = max(e[1] for e in errors)
        quality[label] = {
            "sweeps": sweeps,
            "max_l2_column_error": column,
            "max_l2_row_error": max(e[0] for e in errors),
            "marginals_met": bool(finite and column <= args.tol and len(plans) == len(costs)),
        }
        if len(plans) < len(costs):
            quality[label]["failed_on_slide"] = len(plans)
        plans_by_method[label] = plans64
    mean_entry = 1.0 / (n_max * args.prompts)
    for label in steps:
        for other in ("ours", "pot_log"):
            quality[label][f"max_abs_plan_difference_vs_{other}"] = max(
                float(np.abs(p - q).max())
                for p, q in zip(plans_by_method[label], plans_by_method[other], strict=False)
            )
        # Marginals within tolerance are not enough: a kernel that underflowed in
        # float32 meets them with a different plan. Methods on POT's schedule run the
        # same sweeps, so their plans agree to rounding; ours_every_sweep stops at
        # another sweep and is held to the marginals alone.
        agrees = quality[label]["max_abs_plan_difference_vs_pot_log"] <= PLAN_AGREEMENT * mean_entry
        quality[label]["agrees_with_pot_log"] = (
            None if label == "ours_every_sweep" else bool(agrees)
        )
        quality[label]["converged"] = quality[label]["marginals_met"] and (
            label == "ours_every_sweep" or bool(agrees)
        )
    timed = {label: step for label, step in steps.items() if quality[label]["converged"]}
    times = interleave(timed, rounds, warm_up=False)
    out: dict[str, Any] = {
        "slides": len(sizes),
        "tokens": sizes,
        "eps": eps,
        "mean_plan_entry": mean_entry,
        "methods": {
            label: {
                **quality[label],
                **({"seconds": spread(times[label], 6)} if label in times else {}),
                "warm_up_s": warm_up_s[label],
                **({} if label in times else {"not_timed": _why_not_timed(quality[label])}),
            }
            for label in steps
        },
    }
    peers = [label for label in POT_METHODS if label in times]
    if "ours" in times and peers:
        fastest = min(peers, key=lambda label: statistics.median(times[label]))
        versus = head_to_head("ours", fastest, times, goal=1.0)
        out["fastest_converged_pot"] = fastest
        out["ours_vs_fastest_pot"] = versus
        out["ours_over_each_pot_median"] = {
            label: round(statistics.median(times["ours"]) / statistics.median(times[label]), 3)
            for label in peers
        }
    return out


def _sizes(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("patches", "regions", "prompts", "width", "feature_dim", "text_dim")
    return {key: getattr(args, key) for key in keys}


def interleaved_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Settings of :func:`measure_interleaved` from the command's arguments."""
    return {
        **_sizes(args),
        "memory_limit_gb": args.memory_limit_gb,
        "rounds": DEFAULT_ROUNDS if args.repeats is None else args.repeats,
        "head_to_head_threads": DEFAULT_HEAD_TO_HEAD_THREADS
        if args.threads is None
        else args.threads,
    }


def run(args: argparse.Namespace) -> dict:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    settings = {
        **_sizes(args),
        "repeats": DEFAULT_REPEATS if args.repeats is None else args.repeats,
        "threads": torch.get_num_threads(),
        "memory_limit_gb": args.memory_limit_gb,
    }
    out: dict[str, Any] = {
        "settings": settings,
        "memory": "peak RSS growth (ru_maxrss) per process",
    }
    if not args.skip_models:
        names = benchmark_models(args)
        models = measure_models(names, settings)
        out["models"] = models
        hila, abmil = models.get("hila", {}), models.get("abmil", {})
        if "forward_backward_s" in hila and "forward_backward_s" in abmil:
            out["hila_over_abmil"] = {
                "forward": round(hila["forward_s"] / abmil["forward_s"], 2),
                "forward_backward": round(
                    hila["forward_backward_s"] / abmil["forward_backward_s"], 2
                ),
                "goal": f"<= {DEFAULT_GOALS['hila_over_abmil_forward_backward']}",
                "note": "each model in its own process, one after another: load drift moves "
                "this; hila_vs_abmil is the interleaved measurement",
            }
        if "hila" in names:
            _progress("hila and abmil interleaved, and hila's explanation")
            measured = measure_interleaved(interleaved_settings(args), True, "abmil" in names)
            if "error" in measured:
                out["interleaved"] = measured
            else:
                for key in ("hila_vs_abmil", "hila_explanation"):
                    if key in measured:
                        out[key] = measured.pop(key)
                out["interleaved"] = measured  # threads, rounds and patches of the two above

    sinkhorn_threads = configure_torch_threads(
        DEFAULT_HEAD_TO_HEAD_THREADS if args.threads is None else args.threads
    )
    rng = np.random.default_rng(0)
    batch_sizes = sorted(
        rng.integers(args.patches // 4, args.patches + 1, args.sinkhorn_batch).tolist()
    )
    rounds = DEFAULT_REPEATS if args.repeats is None else args.repeats
    out["sinkhorn"] = {
        "settings": {
            "tol": args.tol,
            "max_iter": args.max_iter,
            "dtype": "float32",
            "torch_threads": sinkhorn_threads,
            "rounds": rounds,
            "error_checked_after_sweeps": f"1, 1 + {POT_CHECK_EVERY}k (POT's schedule)",
        },
        "goal": "ours at most the time of POT's fastest converged method (ratio <= 1)",
    }
    for eps in args.eps:
        for label, sizes in (("one_slide", [args.patches]), ("batch", batch_sizes)):
            _progress(f"Sinkhorn, {label.replace('_', ' ')}, eps {eps}")
            out["sinkhorn"][f"{label}_eps_{eps:g}"] = compare_sinkhorn(args, sizes, eps, rounds)
    return out


def _progress(text: str) -> None:
    """A line on stderr, so the JSON on stdout stays clean."""
    print(f"bench model: {text}", file=sys.stderr, flush=True)
