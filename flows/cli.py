"""The `neuron-audit` command line (also `python -m audit`).

Exit codes everywhere: 0 success, 1 drift FAIL found (compare/run/demo), 2 bad input
or runtime error, with a message on stderr that says what and where."""
from __future__ import annotations

from flows.env import apply_offline_env

apply_offline_env()

import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Optional  # noqa: E402

import typer  # noqa: E402
from rich.console import Console  # noqa: E402

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="neuron-audit: nightly audits of what the critical neurons of vision models look for.")
db_app = typer.Typer(no_args_is_help=True, help="Database maintenance.")
app.add_typer(db_app, name="db")
out = Console()
err = Console(stderr=True)

ConfigOpt = typer.Option("neuron-audit.yaml", "-c", "--config", help="Path of neuron-audit.yaml.")


class Exit(Exception):
    def __init__(self, code: int):
        self.code = code


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise Exit(code)


def _config(path: str):
    from audit.config import load_config

    return load_config(path)


class _Progress:
    """A rich progress display fed by flows.progress."""

    def __init__(self, enabled: bool = True):
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                                 TimeElapsedColumn(), console=err, transient=False, disable=not enabled)
        self.tasks: dict[str, int] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(stage, total=total or None)
        self.progress.update(self.tasks[stage], completed=done, total=total or None)

    def __enter__(self):
        from . import progress

        self.progress.__enter__()
        progress.set_callback(self)
        return self

    def __exit__(self, *exc):
        from . import progress

        progress.set_callback(None)
        self.progress.__exit__(*exc)


def _print_reports(reports: list[dict]) -> int:
    from audit.report import exit_code, verdict_table

    code = 0
    for r in reports:
        out.print(verdict_table(r))
        code = max(code, exit_code(r))
    return code


@app.command()
def demo(directory: Path = typer.Option(Path("neuron-audit-demo"), "--dir", help="Where the demo writes its config, checkpoint and store."),
         quick: bool = typer.Option(False, "--quick", help="Lower resolution and fewer steps: same verdicts, a first look in minutes."),
         progress: bool = typer.Option(True, help="Show a progress display.")) -> None:
    """The main job on the built-in model: plant a known change in a second version of
    Lite0, audit both versions, compare them, print the verdicts and the report location."""
    from .demo import PLANTED_NEURON, prepare_demo

    t0 = time.perf_counter()
    directory = directory.resolve()
    err.print(f"neuron-audit demo in {directory} ({'quick' if quick else 'full'})")
    with _Progress(progress) as prog:
        prog("prepare version 2 (planted change)", 0, 1)
        config_path, change = prepare_demo(directory, quick)
        prog("prepare version 2 (planted change)", 1, 1)
        if change:
            err.print(f"planted: espresso (967) fine-tuned to fire on cat photographs: top-1 on cat crops "
                      f"{change['before_top1_rate']:.0%} → {change['after_top1_rate']:.0%}; other images' logit moved ≤ "
                      f"{change['others_max_logit_shift']:.3f}")
        from .audit_flow import run_audit

        summary = run_audit(str(config_path))
    reports = [r for r in summary["reports"] if (r["baseline"], r["candidate"]) == ("1", "2")]
    code = _print_reports(reports)
    report_dir = directory / "report"
    _export_report(str(config_path), report_dir)
    planted = next((n for r in reports for n in r["neurons"] if n["id"] == PLANTED_NEURON), None)
    if planted:
        out.print(f"planted neuron [bold]{PLANTED_NEURON}[/]: {planted['verdict']} — {planted['reason']}")
    out.print(f"compare report (JSON): {reports[0].get('report_path') if reports else '-'}")
    out.print(f"static report: {report_dir / 'index.html'}")
    out.print(f"dashboard: neuron-audit dashboard -c {config_path}  (http://127.0.0.1:8050)")
    out.print(f"demo finished in {time.perf_counter() - t0:.0f} s")
    raise Exit(code)


@app.command()
def run(config: str = ConfigOpt,
        model: Optional[str] = typer.Option(None, "--model", help="Audit only this model."),
        version: Optional[str] = typer.Option(None, "--version", help="Audit only this version."),
        no_visuals: bool = typer.Option(False, "--no-visuals", help="Verdicts from probe-set statistics alone.")) -> None:
    """One audit now: the same Prefect flow the schedule runs."""
    cfg = _config(config)
    if model:
        cfg.model(model)
    from .audit_flow import run_audit

    with _Progress():
        summary = run_audit(config, model=model, version=version, with_visuals=not no_visuals)
    raise Exit(_print_reports(summary["reports"]))


@app.command()
def serve(config: str = ConfigOpt,
          port: int = typer.Option(4200, help="Port of the Prefect server started when PREFECT_API_URL answers nothing.")) -> None:
    """Serve the nightly deployment (the config's cron and timezone)."""
    cfg = _config(config)
    from .deploy import serve_nightly

    err.print(f"serving deployment nightly-audit/nightly: cron {cfg.schedule.cron!r} ({cfg.schedule.timezone})")
    serve_nightly(config, port=port, home=cfg.resolve_path(".neuron-audit"))


@app.command()
def visualize(config: str = ConfigOpt,
              model: str = typer.Option(..., "--model"), version: str = typer.Option(..., "--version"),
              neuron: str = typer.Option(..., "--neuron"),
              out_png: Path = typer.Option(Path("visualization.png"), "--out"),
              seed: int = typer.Option(0, "--seed"), steps: Optional[int] = typer.Option(None, "--steps"),
              method: str = typer.Option("vital", "--method", help="vital | fourier | maco")) -> None:
    """Render one visualization, without storage."""
    from PIL import Image

    from audit.config import check_neurons_against_model
    from audit.pipeline import neuron_target, references_for

    from . import runtime

    cfg = _config(config)
    mcfg = cfg.model(model)
    n = mcfg.neuron(neuron)
    if steps is not None:
        mcfg.visualization.steps = steps
    loaded = runtime.load_version(config, model, version)
    problem = check_neurons_against_model(mcfg, loaded.model).get(n.id)
    if problem:
        _fail(problem)
    from .work import visualization_settings

    settings = visualization_settings(config, model)
    size = settings.resolution
    with _Progress():
        viz = _render_one(cfg, mcfg, n, loaded.model, settings, size, seed, method)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(viz.image).save(out_png)
    out.print(f"wrote {out_png} ({viz.seconds:.1f} s, final loss {viz.loss_history[-1] if viz.loss_history else float('nan'):.4g})")
    if viz.mask is not None:
        mask_path = out_png.with_name(out_png.stem + "_mask.png")
        Image.fromarray((viz.mask * 255).astype("uint8")).save(mask_path)
        out.print(f"wrote {mask_path}")


def _render_one(cfg, mcfg, n, model, settings, size, seed, method):
    from audit.pipeline import neuron_target, references_for

    from . import progress, runtime

    target = neuron_target(n)
    if method == "vital":
        from audit.stats import neuron_activations
        from audit.vital import VitalRequest, render_vital

        probe = runtime.probe_set(cfg, mcfg, model)
        values = neuron_activations(model, probe, [target])[n.id].max
        refs = references_for(n, model, probe.images, values, size=size, count=mcfg.visualization.n_references,
                              seed=seed, base_dir=cfg.base_dir)
        return render_vital(model, [VitalRequest(target, refs.images, refs.use_relevance)], settings, seed=seed,
                            device=runtime.device(), progress=progress.step_reporter(f"VITAL {n.id}"))[0]
    from audit import baselines

    if method == "fourier":
        return baselines.render_fourier(model, [target], size=size, steps=settings.steps, seed=seed,
                                        device=runtime.device())[0]
    if method == "maco":
        probe = runtime.probe_set(cfg, mcfg, model)
        return baselines.render_maco(model, [target], reference_images=probe.images, size=size, steps=settings.steps,
                                     seed=seed, device=runtime.device())[0]
    _fail(f"unknown method {method!r}; valid: vital, fourier, maco")


@app.command()
def compare(config: str = ConfigOpt, model: str = typer.Option(..., "--model"),
            baseline: str = typer.Option(..., "--baseline"), candidate: str = typer.Option(..., "--candidate"),
            json_out: Optional[Path] = typer.Option(None, "--json", help="Write the compare report (SPEC.md) here."),
            no_visuals: bool = typer.Option(False, "--no-visuals", help="Skip the statistics that need visualizations.")) -> None:
    """Compare two versions of one model, computing what the store lacks. Exit 1 on any FAIL."""
    cfg = _config(config)
    mcfg = cfg.model(model)
    from . import work

    with _Progress() as prog:
        for v in (baseline, candidate):
            prog(f"version {v}", 0, 3)
            work.register_version(config, model, v)
            o = work.probe_statistics(config, model, v, work.VersionOutcome(model, v))
            prog(f"version {v}", 2, 3)
            if not no_visuals:
                work.render_visualizations(config, model, v, None, o)
            prog(f"version {v}", 3, 3)
        report = work.compare_pair(config, model, baseline, candidate, None, with_visuals=not no_visuals)
    public = {k: v for k, v in report.items() if k != "drift_ids"}
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(public, indent=2, default=str))
        err.print(f"wrote {json_out}")
    raise Exit(_print_reports([report]))


def _export_report(config: str, out_dir: Path) -> Path:
    from dashboards.export import export_static

    from . import runtime

    cfg = runtime.config(config)
    return export_static(runtime.store(config), str(cfg.resolve_path(cfg.store.artifacts)), out_dir)


@app.command()
def report(config: str = ConfigOpt, out_dir: Path = typer.Option(..., "--out", help="Folder for the static HTML.")) -> None:
    """Write the dashboard's views as static HTML, openable from disk."""
    index = _export_report(config, out_dir)
    out.print(f"static report: {index}")


@app.command()
def dashboard(config: str = ConfigOpt, host: str = typer.Option("127.0.0.1", help="Bind address (loopback by default)."),
              port: int = typer.Option(8050)) -> None:
    """Serve the read-only web dashboard."""
    from dashboards.app import serve as serve_dashboard

    from . import runtime

    cfg = runtime.config(config)
    mlflow_ui = cfg.store.mlflow_tracking_uri if cfg.store.mlflow_tracking_uri.startswith("http") else None
    out.print(f"dashboard on http://{host}:{port}")
    serve_dashboard(runtime.store(config), str(cfg.resolve_path(cfg.store.artifacts)), host=host, port=port,
                    mlflow_ui_url=mlflow_ui)


@app.command()
def layers(config: Optional[str] = typer.Option(None, "-c", "--config", metavar="CONFIG",
                                                help="Path of neuron-audit.yaml (with --model, instead of --architecture)."),
           model: Optional[str] = typer.Option(None, "--model", metavar="MODEL",
                                               help="A model of the config: its architecture, num_classes and model_args "
                                                    "(the head size read from its first checkpoint when not given)."),
           architecture: Optional[str] = typer.Option(None, "--architecture", metavar="NAME", help="A timm architecture name."),
           model_arg: list[str] = typer.Option([], "--model-arg", metavar="KEY=VALUE",
                                               help="A timm.create_model argument (repeatable; the value is read as YAML), "
                                                    "e.g. --model-arg num_classes=10 --model-arg img_size=384."),
           depth: Optional[int] = typer.Option(None, "--depth", metavar="N", help="Only modules at most N dots deep.")) -> None:
    """List every layer a neuron or tap may use: its kind, layout and channel count (at the model's own input size)."""
    import yaml

    from audit.errors import AuditInputError
    from audit.models import create_architecture, fit_head_to_checkpoint, model_input_hw, read_source
    from audit.taps import default_taps, describe_layers, output_layer_name

    args: dict = {}
    if architecture is None:
        if not (config and model):
            _fail("give --architecture NAME, or -c CONFIG --model NAME")
        cfg = _config(config)
        mcfg = cfg.model(model)
        architecture, args = mcfg.architecture, dict(mcfg.model_args)
        if mcfg.num_classes is not None:
            args["num_classes"] = mcfg.num_classes
        state_source = next((v.source for v in mcfg.versions if not v.source.startswith("models:/")), None)
    else:
        state_source = None
    for item in model_arg:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            _fail(f"--model-arg {item!r}: give KEY=VALUE, e.g. num_classes=10")
        try:
            args[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            _fail(f"--model-arg {item!r}: the value is not valid YAML: {exc}")
    m = create_architecture(architecture, args).eval()
    if state_source is not None and "num_classes" not in args:
        fit_head_to_checkpoint(m, read_source(state_source, cfg.base_dir))
    taps = set(default_taps(m))
    try:
        head = output_layer_name(m)
    except AuditInputError:          # a headless model has no class layer
        head = None
    h, w = model_input_hw(m)
    typer.echo(f"# {architecture}: input {h}x{w}; columns: layer, kind, layout, channels, note (tab-separated)")
    described = describe_layers(m)
    position = {n: i for i, (n, _) in enumerate(m.named_modules())}
    for name in sorted(described, key=lambda n: (position.get(n.split(":")[0], -1), n)):
        info, module = described[name], name.split(":")[0]
        if depth is not None and module.count(".") > depth:
            continue
        if name.endswith(":heads"):
            kind = "head"
        else:
            kind = "class" if module == head else "inner"
        notes = (["default tap"] if module in taps and kind == "inner" else [])
        typer.echo(f"{module}\t{kind}\t{info.layout.describe()}\t{info.channels}" + "".join(f"\t{n}" for n in notes))


@app.command()
def evaluate(config: str = ConfigOpt, model: str = typer.Option(..., "--model"), version: str = typer.Option(..., "--version")) -> None:
    """Quality of the stored class visualizations: self top-1, transfer top-1/top-5 on the
    other built-in models, Fréchet distance to the reference images."""
    from audit.quality import evaluate_class_visualizations

    from . import runtime
    from .work import stored_visualizations

    cfg = _config(config)
    mcfg = cfg.model(model)
    store = runtime.store(config)
    loaded = runtime.load_version(config, model, version)
    result = evaluate_class_visualizations(
        store_images=lambda nid: list(stored_visualizations(store, model, nid, [version])[str(version)].values()),
        model=loaded.model, model_cfg=mcfg, base_dir=cfg.base_dir)
    out.print_json(json.dumps(result, default=str))


@db_app.command("upgrade")
def db_upgrade(config: str = ConfigOpt) -> None:
    """Apply the database migrations (creates the schema on an empty database)."""
    from storage.migrate import current, upgrade

    cfg = _config(config)
    upgrade(cfg.store.database)
    out.print(f"database at revision {current(cfg.store.database)}")


def main(argv: list[str] | None = None) -> None:
    """Console-script entry: maps errors to the exit codes of SPEC.md."""
    from audit.errors import AuditInputError

    try:
        app(args=argv, standalone_mode=False)
    except Exit as e:
        sys.exit(e.code)
    except AuditInputError as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as e:  # click usage errors and runtime errors
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(2)
        if isinstance(e, click.exceptions.Abort):
            sys.exit(130)
        err.print(f"[bold red]error:[/] {e.__class__.__name__}: {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
    sys.exit(0)


if __name__ == "__main__":
    main()
