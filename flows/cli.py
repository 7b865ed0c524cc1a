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

# rich_markup_mode=None: click's plain help, in which a flag takes no value; typer's rich help prints
# a `<bool>` type after every flag (`--quick <bool>`), as if it needed one.
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="neuron-audit: nightly audits of what the critical neurons of vision models look for.")
db_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Database maintenance.")
app.add_typer(db_app, name="db")
out = Console()
err = Console(stderr=True)

ConfigOpt = typer.Option("neuron-audit.yaml", "-c", "--config", metavar="CONFIG", help="Path of neuron-audit.yaml.")


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
def demo(directory: Path = typer.Option(Path("neuron-audit-demo"), "--dir", metavar="DIR", help="Where the demo writes its config, checkpoint and store."),
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
        model: Optional[str] = typer.Option(None, "--model", metavar="MODEL", help="Audit only this model (models[].name)."),
        version: Optional[str] = typer.Option(None, "--version", metavar="VERSION", help="Audit only this version of the model."),
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
          port: int = typer.Option(4200, metavar="PORT",
                                   help="Port of the Prefect server started when PREFECT_API_URL answers nothing."),
          work_pool: Optional[str] = typer.Option(None, "--work-pool", metavar="NAME",
                                                  help="Register the deployment on this Prefect work pool and exit; "
                                                       "the pool's workers run it.")) -> None:
    """Run the nightly audit on the config's schedule (Prefect deployment
    `nightly-audit/nightly`).

    \b
    The deployment: flow `nightly-audit`, deployment `nightly`, tag
    `neuron-audit`, parameter config_path = CONFIG's absolute path. Each run
    audits every enabled model, like `neuron-audit run`. The schedule is the
    config's `schedule: {cron, timezone}` (default "0 2 * * *", UTC). Heavy
    tasks run one at a time per worker (concurrency tag neuron-audit-heavy).

    \b
    Without --work-pool, this process serves the deployment and runs each
    scheduled flow run itself: it blocks until Ctrl-C. It uses the Prefect
    server in PREFECT_API_URL, or starts one on 127.0.0.1:PORT (UI at
    http://127.0.0.1:PORT, data in .neuron-audit/ next to the config).

    \b
    On a work pool (other machines, several workers):
      export PREFECT_API_URL=http://prefect-host:4200/api
      prefect work-pool create neuron-audit --type process
      neuron-audit serve -c neuron-audit.yaml --work-pool neuron-audit
      prefect worker start --pool neuron-audit
    The third line registers the deployment and returns; run the worker on
    each machine that has neuron-audit installed and reaches the config's
    paths and store.
    """
    cfg = _config(config)
    from .deploy import deploy_to_work_pool, serve_nightly

    if work_pool:
        deployment_id = deploy_to_work_pool(config, work_pool)
        out.print(f"deployment nightly-audit/nightly ({deployment_id}) registered on work pool {work_pool!r}: "
                  f"cron {cfg.schedule.cron!r} ({cfg.schedule.timezone}); start workers with "
                  f"`prefect worker start --pool {work_pool}`")
        return

    err.print(f"serving deployment nightly-audit/nightly: cron {cfg.schedule.cron!r} ({cfg.schedule.timezone})")
    serve_nightly(config, port=port, home=cfg.resolve_path(".neuron-audit"))


@app.command()
def visualize(config: str = ConfigOpt,
              model: str = typer.Option(..., "--model", metavar="MODEL", help="Model name from the config (models[].name)."),
              version: str = typer.Option(..., "--version", metavar="VERSION", help="Version of the model to render."),
              neuron: str = typer.Option(..., "--neuron", metavar="NEURON", help="Neuron id from the config (neurons[].id)."),
              out_png: Path = typer.Option(Path("visualization.png"), "--out", metavar="PNG",
                                           help="PNG file to write; a mask, when the method gives one, goes to NAME_mask.png."),
              seed: int = typer.Option(0, "--seed", metavar="SEED", help="Random seed of the visualization."),
              steps: Optional[int] = typer.Option(None, "--steps", metavar="N",
                                                  help="Optimization steps (default: visualization.steps of the config)."),
              method: str = typer.Option("vital", "--method", metavar="METHOD", help="vital | fourier | maco")) -> None:
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
def compare(config: str = ConfigOpt,
            model: str = typer.Option(..., "--model", metavar="MODEL", help="Model name from the config (models[].name)."),
            baseline: str = typer.Option(..., "--baseline", metavar="V1", help="The version compared against (the older one)."),
            candidate: str = typer.Option(..., "--candidate", metavar="V2", help="The version under audit (the newer one)."),
            json_out: Optional[Path] = typer.Option(None, "--json", metavar="OUT",
                                                    help="Write the compare report here (JSON, docs/compare-report.md)."),
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
def report(config: str = ConfigOpt,
           out_dir: Path = typer.Option(..., "--out", metavar="DIR", help="Folder for the static HTML.")) -> None:
    """Write the dashboard's views as static HTML, openable from disk."""
    index = _export_report(config, out_dir)
    out.print(f"static report: {index}")


@app.command()
def dashboard(config: str = ConfigOpt,
              host: str = typer.Option("127.0.0.1", metavar="HOST", help="Bind address (loopback by default)."),
              port: int = typer.Option(8050, metavar="PORT", help="Port to listen on.")) -> None:
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
           model: Optional[str] = typer.Option(None, "--model", metavar="MODEL", help="Use this model's architecture from the config."),
           architecture: Optional[str] = typer.Option(None, "--architecture", metavar="NAME", help="A timm architecture name.")) -> None:
    """List the layer names neurons and taps may use, with their channel counts."""
    from audit.models import create_architecture
    from audit.taps import default_taps, layer_channels, layer_names

    if architecture is None:
        if not (config and model):
            _fail("give --architecture NAME, or -c CONFIG --model NAME")
        architecture = _config(config).model(model).architecture
    m = create_architecture(architecture).eval()
    taps = set(default_taps(m))
    for name in layer_names(m):
        if name.count(".") <= 2:
            try:
                ch = layer_channels(m, name)
            except Exception:
                continue
            mark = "\tdefault tap" if name in taps else ""
            out.print(f"{name}\t{ch}{mark}")


@app.command()
def evaluate(config: str = ConfigOpt,
             model: str = typer.Option(..., "--model", metavar="MODEL", help="Model name from the config (models[].name)."),
             version: str = typer.Option(..., "--version", metavar="VERSION",
                                         help="Version whose stored visualizations are scored.")) -> None:
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
    """Console-script entry: maps errors to the exit codes of docs/cli.md."""
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
