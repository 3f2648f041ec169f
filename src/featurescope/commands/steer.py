"""The `featurescope steer` and `featurescope steer-sweep` commands."""

from __future__ import annotations

import argparse
import re
from typing import Any

from featurescope.errors import FeaturescopeError
from featurescope.terminal import dumps

# Let "-2x" and "-2,0,5" be option values (argparse would take them for options); `--clamp=-2x` always works.
_NEGATIVE_VALUE = re.compile(r"^-(\d|\.\d)")
SHOWN_MULTIPLES = (1.0, 2.0, 5.0)
"""What --show-multiples shows beside the chosen value (5x: the paper's examples)."""


def _allow_negative_values(parser: argparse.ArgumentParser) -> None:
    parser._negative_number_matcher = _NEGATIVE_VALUE


def _load_sae(path: str) -> Any:
    from featurescope.sae import SAE

    if not path:
        raise FeaturescopeError("no SAE given (--sae)")
    return SAE.load(path)


def _load_model(name: str, sae: Any, device: str) -> Any:
    from featurescope.models import load_model

    return load_model(name or sae.cfg.model or "default", device=device)


def _pairs(features: list[int], values: list[str]) -> dict[int, Any]:
    """{feature: value} from repeated --feature and --clamp (one value applies to every feature)."""
    from featurescope.steering.values import parse_value

    if len(values) == 1:
        values = values * len(features)
    if len(values) != len(features):
        raise FeaturescopeError(f"{len(features)} features but {len(values)} values: give one --clamp per "
                                "--feature, or one for all")
    out: dict[int, Any] = {}
    for feature, value in zip(features, values, strict=True):
        if feature in out:
            raise FeaturescopeError(f"feature {feature} is given twice")
        out[feature] = _bounded(parse_value(value))
    return out


MAX_ABS_STEER = 1e6
"""Largest absolute steering value or multiple (the explorer's limit too): beyond it the activations overflow."""


def _bounded(value: Any) -> Any:
    """`value` (a SteerValue) unless its magnitude is over MAX_ABS_STEER."""
    if abs(value.amount) > MAX_ABS_STEER:
        raise FeaturescopeError(f"steering value {value} is too large (at most {MAX_ABS_STEER:g} in magnitude)")
    return value


def _feature_label(store: Any, feature: int) -> str:
    if store is None:
        return ""
    labels = store.labels(feature)
    return labels[0].text if labels else ""


def _print_pair(result: Any, features: dict[int, Any], mode: str, labels: dict[int, str], auto: dict[int, Any],
                others: dict[str, str]) -> None:
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    from featurescope.terminal import SafeConsole as Console

    console = Console()
    parts = []
    for i, given in features.items():
        label = f" “{labels[i]}”" if labels.get(i) else ""
        parts.append(f"feature {i}{label} {mode} {given} = {result.values[i]:.4g}")
    console.print(Text("prompt: ", style="bold") + Text(result.prompt))
    console.print(Text("steered: ", style="bold") + Text("; ".join(parts)))
    for i, c in auto.items():
        how = "cached" if c.cached else "calibrated"
        console.print(Text(f"feature {i}: auto = {c.multiple:g}x ({how}): {c.reason}", style="dim"))
    grid = Table.grid(expand=True, padding=(0, 1))
    grid.add_column(ratio=1)
    grid.add_column(ratio=1)
    grid.add_row(Panel(Text(result.baseline, overflow="fold"), title="baseline"),
                 Panel(Text(result.steered, overflow="fold"), title="steered"))
    console.print(grid)
    for name, text in others.items():
        console.print(Panel(Text(text, overflow="fold"), title=f"steered at {name}"))


def _resolve_auto(features: dict[int, Any], db: str, model: Any, sae: Any, max_acts: Any, mode: str
                  ) -> dict[int, Any]:
    """Calibrated choices (`steering.auto`) of the features given `auto`, cached in the database `db`."""
    from featurescope.steering.auto import auto_value
    from featurescope.steering.calibrate import CalibrationConfig
    from featurescope.steering.values import max_activation, open_feature_store

    out = {}
    with open_feature_store(db) as store:
        for i, v in features.items():
            if v.auto:
                out[i] = auto_value(model, sae, i, max_activation(max_acts, i) or 0.0, con=store.con, db=db,
                                    cfg=CalibrationConfig(mode=mode))
    return out


def _multiples(model: Any, sae: Any, features: dict[int, Any], max_acts: Any, args: argparse.Namespace,
               multiples: tuple[float, ...]) -> dict[str, str]:
    """The steered continuation of the prompt with every feature at each of `multiples` × its max activation."""
    from featurescope.steering.generate import decode, encode_prompt, generation_kwargs, run_generate
    from featurescope.steering.hook import attach, make_hook
    from featurescope.steering.values import SteerValue

    ids, _ = encode_prompt(model, args.prompt, chat=args.chat)
    kwargs = generation_kwargs(model, max_new_tokens=args.max_new_tokens, temperature=args.temperature)
    out = {}
    for m in multiples:
        hook, layer = make_hook(model, sae, {i: SteerValue(m, True) for i in features}, mode=args.mode,
                                max_acts=max_acts, layer=args.layer, skip_special=not args.all_positions)
        with attach(model, hook, layer):
            out[f"{m:g}x"] = decode(model, run_generate(model, ids, kwargs, args.seed))
    return out


def _cmd_steer(args: argparse.Namespace) -> int:
    from featurescope.steering.generate import generate
    from featurescope.steering.hook import MODES, load_max_acts
    from featurescope.steering.values import SteerValue, check_feature, open_feature_store, resolve_values

    if not args.prompt or not args.prompt.strip():
        raise FeaturescopeError("the prompt is empty (--prompt)")
    if args.mode not in MODES:
        raise FeaturescopeError(f"unknown steering mode {args.mode!r}; choose one of {', '.join(MODES)}")
    features = _pairs(args.feature, args.clamp or ["auto"])
    if not args.db and any(v.multiple for v in features.values()):
        raise FeaturescopeError("a value such as 5x or auto (the default) is a multiple of the feature's max "
                                "activation: give the feature database (--db) or absolute values (--clamp)")
    if args.show_multiples and args.image:
        raise FeaturescopeError("--show-multiples works with text prompts only (leave out --image)")
    sae = _load_sae(args.sae)
    for i in features:
        check_feature(i, sae.cfg.d_sae)
    store = open_feature_store(args.db) if args.db else None
    try:
        max_acts = load_max_acts(store, sae)
        fixed = {i: v for i, v in features.items() if not v.auto}
        probe = {**fixed, **{i: SteerValue(1.0, True) for i in features if i not in fixed}}
        resolve_values(probe, sae.cfg.d_sae, max_acts)  # fail before loading the model
        labels = {i: _feature_label(store, i) for i in features}
    finally:
        if store is not None:
            store.close()
    model = _load_model(args.model, sae, args.device)
    auto = _resolve_auto(features, args.db, model, sae, max_acts, args.mode) if len(fixed) < len(features) else {}
    chosen = {i: SteerValue(auto[i].multiple, True) if i in auto else v for i, v in features.items()}
    kwargs = dict(mode=args.mode, max_acts=max_acts, max_new_tokens=args.max_new_tokens, seed=args.seed,
                  chat=args.chat, temperature=args.temperature, layer=args.layer, skip_special=not args.all_positions)
    if args.image:  # an image prompt to an image-text model (featurescope.steering.images)
        from featurescope.steering.images import generate_with_image

        result = generate_with_image(model, sae, args.prompt, args.image, chosen, **kwargs)
    else:
        result = generate(model, sae, args.prompt, chosen, **kwargs)
    others = _multiples(model, sae, features, max_acts, args, SHOWN_MULTIPLES) if args.show_multiples else {}
    if args.json:
        print(dumps({
            "prompt": result.prompt, "baseline": result.baseline, "steered": result.steered, "mode": args.mode,
            "features": {str(i): {"given": str(v), "value": result.values[i], "label": labels[i],
                                  **({"auto": {"multiple": auto[i].multiple, "reason": auto[i].reason,
                                               "cached": auto[i].cached}} if i in auto else {})}
                         for i, v in features.items()},
            **({"multiples": others} if others else {}),
        }, indent=2))
    else:
        _print_pair(result, chosen, args.mode, labels, auto, others)
    return 0


def _print_sweep(result: Any, paths: tuple[Any, Any]) -> None:
    from rich.table import Table

    from featurescope.terminal import SafeConsole as Console

    def num(x: float | None, fmt: str = ".3g") -> str:
        return "–" if x is None or x != x else format(x, fmt)

    tokens = ", ".join(repr(t) for _, t in result.top_tokens)
    table = Table(title=f"feature {result.feature}, {result.mode}; max activation {result.max_activation:.4g}; "
                        f"top logit-effect tokens: {tokens}")
    for name in ("multiple", "value", "f after edit", "f in text", "fires", "KL", "ΔCE", "top p ×", "top rate",
                 "continuation"):
        table.add_column(name, justify="left" if name == "continuation" else "right",
                         overflow="fold" if name == "continuation" else "ellipsis")
    for r in result.rows:
        table.add_row("none" if r.multiple is None else f"{r.multiple:g}x", num(r.value), num(r.act_hooked),
                      num(r.act_text), num(r.fire_text, ".0%"), num(r.kl), num(r.delta_ce, "+.3g"),
                      num(r.top_prob_ratio), num(r.top_rate, ".0%"), r.text)
    console = Console()
    console.print(table)
    console.print(f"wrote {paths[0]} and {paths[1]}")


def _cmd_sweep(args: argparse.Namespace) -> int:
    from featurescope.cli_args import dataclass_from_args
    from featurescope.steering.hook import load_max_acts
    from featurescope.steering.plot import write_outputs
    from featurescope.steering.sweep import SweepConfig, result_json, sweep
    from featurescope.steering.values import check_feature, open_feature_store, parse_values

    cfg = dataclass_from_args(SweepConfig, args)
    if not cfg.prompt.strip():
        raise FeaturescopeError("the prompt is empty (--prompt)")
    for value in parse_values(cfg.multiples):
        _bounded(value)
    if not cfg.db and cfg.max_activation is None:
        raise FeaturescopeError("a sweep over multiples needs the feature's max activation: give --db or "
                                "--max-activation")
    sae = _load_sae(cfg.sae)
    check_feature(cfg.feature, sae.cfg.d_sae)
    store = open_feature_store(cfg.db) if cfg.db else None
    try:
        max_acts = load_max_acts(store, sae)
        model = _load_model(cfg.model, sae, cfg.device)
        result = sweep(cfg, model, sae, max_acts=max_acts, store=store, progress=not args.quiet)
    finally:
        if store is not None:
            store.close()
    paths = write_outputs(result, cfg.out)
    if args.json:
        print(dumps(result_json(result), indent=2))
    else:
        _print_sweep(result, paths)
    return 0


def register(sub: Any) -> None:
    """Add `steer` and `steer-sweep` to the `featurescope` subcommands."""
    from featurescope.cli import add_command, add_json_flag
    from featurescope.cli_args import add_dataclass_args
    from featurescope.steering.hook import MODES
    from featurescope.steering.sweep import SweepConfig

    p = add_command(sub, "steer", "generate from a prompt with and without features clamped, side by side",
                    _cmd_steer)
    _allow_negative_values(p)
    p.add_argument("--sae", required=True, help="SAE folder")
    p.add_argument("--feature", type=int, action="append", required=True,
                   help="feature id to steer (repeat for several)")
    p.add_argument("--clamp", "--value", dest="clamp", action="append", metavar="VALUE",
                   help="value per --feature: auto (the default: a multiple that keeps neutral continuations "
                        "fluent and makes the feature fire on them, docs/steering.md; needs --db), a multiple of "
                        "the max activation (5x, -2x; needs --db) or an absolute activation (12.5; 0 = ablate); one "
                        "value applies to every feature")
    p.add_argument("--prompt", required=True, help="text to continue")
    p.add_argument("--image", default="", help="an image shown before the prompt (image-text models)")
    p.add_argument("--db", default="", help="feature database (max activations, labels)")
    p.add_argument("--mode", default="clamp", choices=MODES,
                   help="clamp: x + (c − f)·d; add: x + c·d; conditional: clamp only where the feature fires "
                        "(default: clamp)")
    p.add_argument("--model", default="", help="model (default: the SAE's)")
    p.add_argument("--layer", type=int, default=None, help="block to steer at (default: the SAE's)")
    p.add_argument("--max-new-tokens", type=int, default=60, help="tokens to generate (default: 60)")
    p.add_argument("--seed", type=int, default=0, help="seed of both generations (default: 0)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy; else sample (default: 0)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")
    p.add_argument("--all-positions", action="store_true",
                   help="also steer special-token positions (BOS, ...), which are left alone by default")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default: auto)")
    p.add_argument("--show-multiples", action="store_true",
                   help="also show the steered continuation at 1x, 2x and 5x of the max activation")
    p.add_argument("--json", action="store_true", help="print JSON instead of two columns")
    p = add_command(sub, "steer-sweep", "measure a feature's steering effect over a range of multiples "
                    "(activation, KL / CE cost, top-token gain), with a plot", _cmd_sweep)
    _allow_negative_values(p)
    add_dataclass_args(p, SweepConfig)
    add_json_flag(p)
