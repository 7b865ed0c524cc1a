"""The `neuron-audit` command line (also `python -m audit`).

Exit codes everywhere (flows/outcome.py): 0 everything audited, no FAIL; 1 drift FAIL found;
2 bad input found before any work (every problem named with its key and value, nothing stored);
3 the audit ran but some neuron or version could not be audited; 4 internal or infrastructure
error (one line here, the traceback in a log file whose path is printed); 130/143 interrupted."""
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

from flows.outcome import EXIT_CODES_HELP  # noqa: E402

# rich_markup_mode=None: click's plain help, in which a flag takes no value; typer's rich help prints
# a `<bool>` type after every flag (`--quick <bool>`), as if it needed one.
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="neuron-audit: nightly audits of what the critical neurons of vision models look for.",
                  epilog=EXIT_CODES_HELP)
db_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Database maintenance.")
app.add_typer(db_app, name="db")
out = Console()
err = Console(stderr=True)

ConfigOpt = typer.Option("neuron-audit.yaml", "-c", "--config", metavar="CONFIG", help="Path of neuron-audit.yaml.")


@app.callback()
def global_options(quiet: bool = typer.Option(False, "--quiet", help="Only warnings, errors and the verdicts: no stage "
                                                                      "lines, notes or progress."),
                   json_logs: bool = typer.Option(False, "--json-logs",
                                                  help="Log to stderr as one JSON object per line (timestamp, level, "
                                                       "logger, message, stage, event, duration_s, counts); stdout "
                                                       "keeps the verdicts.")) -> None:
    """Logging of every command: one line when each long stage starts and one when it ends (its duration and
    what it produced) on stderr, through the `neuron_audit.*` loggers (flows/logs.py)."""
    from . import logs

    logs.configure(quiet=quiet, json_logs=json_logs)
    if json_logs or quiet:          # the CLI's own messages: one log record, or one passed line, each
        err.file = logs.LinesToLog(logs.get_logger("cli")) if json_logs else logs.QuietLines()
        err.soft_wrap = True


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

        # Bars only on a terminal: without one (a scheduler's log) the stage lines of flows.logs tell the story.
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                                 TimeElapsedColumn(), console=err, transient=False,
                                 disable=not (enabled and err.is_terminal))
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
    from audit.report import exit_code

    from .tables import verdict_table

    code = 0
    for r in reports:
        out.print(verdict_table(r))
        code = max(code, exit_code(r))
    return code


def _print_summary(summary: dict) -> int:
    """The verdict tables, what was skipped, what could not be audited and the warnings; returns the
    exit code the summary stands for (flows/outcome.py)."""
    from .outcome import describe, exit_code, not_audited

    for v in summary.get("versions", []):
        if not v.get("skipped"):
            stats = len(set(v.get("stats_computed") or []) | set(v.get("stats_cached") or []))
            out.print(f"audited {v['model']} v{v['version']}: {stats} neuron(s) "
                      f"(statistics {len(v.get('stats_computed') or [])} computed, {len(v.get('stats_cached') or [])} "
                      f"reused; visualizations {len(v.get('viz_rendered') or [])} rendered, "
                      f"{len(v.get('viz_reused') or [])} reused)", highlight=False, soft_wrap=True)
    _print_reports(summary.get("reports", []))
    skipped = [f"{v['model']} v{v['version']}" for v in summary.get("versions", []) if v.get("skipped")]
    if skipped:
        out.print(f"unchanged since their last audit (weights, config, images and software): {', '.join(skipped)}"
                  + (" — nothing recomputed" if summary.get("unchanged") else ""), soft_wrap=True, highlight=False)
    for w in summary.get("warnings", []):
        err.print(f"[yellow]warning:[/] {w}", highlight=False, soft_wrap=True)
    items = not_audited(summary)
    for item in items:
        err.print(f"[bold red]not audited:[/] {describe(item)}", highlight=False, soft_wrap=True)
    code = exit_code(summary)
    if code == 3 and not items:
        err.print("[bold red]not audited:[/] no neuron was audited", highlight=False)
    return code


def _preflight(config: str, model: str | None = None, version=None, notes: bool = True):
    """The preflight of a command: every problem at once (exit 2), nothing stored; its notes printed."""
    from .preflight import ensure_preflight

    checked = ensure_preflight(config, model=model, version=version)
    if notes:
        for note in checked.notes:
            err.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
    return checked


def _audit(config: str, model: str | None = None, version: str | None = None, with_visuals: bool = True,
           command: str = "run", progress: bool = True, started=None) -> tuple[dict, bool]:
    """Preflight, then the audit under the store's writer lock: only the check is recorded when every
    selected version and comparison is unchanged (no Prefect, no model); otherwise the flow, against
    PREFECT_API_URL or a temporary Prefect server started while this process prepares (or `started`, a
    TemporaryApi the caller already launched; stopped here in every case). Returns (summary, whether
    anything was recomputed)."""
    from . import unchanged
    from .prefect_api import TemporaryApi, configured_api_url
    from .runlock import exclusive_store

    try:
        checked = _preflight(config, model, version)
        cfg = checked.cfg
        with exclusive_store(cfg.store.database, command, notify=lambda m: err.print(f"[yellow]waiting:[/] {m}")):
            store = unchanged.open_store_for_plan(cfg)
            if store is not None:
                plan = unchanged.plan_audit(cfg, checked.context, checked.identities, store, model=model,
                                            version=version, with_visuals=with_visuals)
                if plan.all_unchanged:
                    return unchanged.run_unchanged(cfg, store, plan), False
                store.close()
            if started is None and not configured_api_url():
                started = TemporaryApi.start()          # boots while Prefect is imported
            return _audit_flow(config, model, version, with_visuals, progress, started), True
    finally:
        if started is not None:
            started.stop()


def _audit_flow(config: str, model: str | None, version: str | None, with_visuals: bool, progress: bool,
                started) -> dict:
    """The nightly flow, in this process, against `started` (a TemporaryApi) or the configured API."""
    from .audit_flow import _task_runner, nightly_audit
    from .prefect_api import prefect_api

    _quiet_prefect_console()
    with prefect_api(started), _Progress(progress):
        runner = _task_runner(config)
        f = nightly_audit.with_options(task_runner=runner) if runner is not None else nightly_audit
        return f(config, model=model, version=version, with_visuals=with_visuals)


def _quiet_prefect_console() -> None:
    """Prefect prints a traceback on the console for every exception a flow raises; the CLI says it in
    one line and keeps the traceback in its log file (exit 4), so the console handler drops them."""
    import logging

    def no_tracebacks(record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and record.exc_info)

    for name in ("prefect", "prefect.flow_runs", "prefect.task_runs", ""):
        for h in logging.getLogger(name).handlers:
            if isinstance(h, logging.StreamHandler) and no_tracebacks not in h.filters:
                h.addFilter(no_tracebacks)
    from . import logs

    logs.adopt_console_handlers()        # Prefect's own lines follow --json-logs and --quiet


@app.command(epilog=EXIT_CODES_HELP)
def demo(directory: Path = typer.Option(Path("neuron-audit-demo"), "--dir", metavar="DIR", help="Where the demo writes its config, checkpoint and store."),
         quick: bool = typer.Option(False, "--quick", help="Lower resolution and fewer steps: same verdicts, a first look in minutes."),
         progress: bool = typer.Option(True, help="Show a progress display.")) -> None:
    """The main job on the built-in model: plant a known change in a second version of
    Lite0, audit both versions, compare them, print the verdicts and the report location.
    An unchanged re-run only records the check and prints the stored verdicts."""
    from .demo import PLANTED_NEURON, needs_planted_version, prepare_demo
    from .prefect_api import TemporaryApi, configured_api_url

    t0 = time.perf_counter()
    directory = directory.resolve()
    err.print(f"neuron-audit demo in {directory} ({'quick' if quick else 'full'})")
    # A first run has an audit to do: its Prefect server boots while version 2 is being built.
    started = TemporaryApi.start() if needs_planted_version(directory) and not configured_api_url() else None
    try:
        config_path, change = prepare_demo(directory, quick)
    except BaseException:
        if started is not None:
            started.stop()
        raise
    if change:
        err.print(f"planted: espresso (967) fine-tuned to fire on cat photographs: top-1 on cat crops "
                  f"{change['before_top1_rate']:.0%} → {change['after_top1_rate']:.0%}; other images' logit moved ≤ "
                  f"{change['others_max_logit_shift']:.3f}")
    summary, recomputed = _audit(str(config_path), command="demo", progress=progress, started=started)
    shown = {**summary, "reports": [r for r in summary["reports"] if (r["baseline"], r["candidate"]) == ("1", "2")]}
    code = _print_summary(shown)
    from .demo import watch_demo_batches

    watched = watch_demo_batches(config_path, directory)       # before the export: the report shows the batches
    report_dir = directory / "report"
    if recomputed or not (report_dir / "index.html").is_file():
        from .logs import get_logger, stage

        with stage("static report", str(report_dir / "index.html"), get_logger("demo")):
            _export_report(str(config_path), report_dir)
    reports = shown["reports"]
    planted = next((n for r in reports for n in r["neurons"] if n["id"] == PLANTED_NEURON), None)
    if planted:
        out.print(f"planted neuron [bold]{PLANTED_NEURON}[/]: {planted['verdict']} — {planted['reason']}")
    for w in watched:
        out.print(f"watched batch [bold]{w['batch_id']}[/] ({w['n_images']} images): {w['verdict']} — {w['summary']}")
    out.print(f"compare report (JSON): {reports[0].get('report_path') if reports else '-'}")
    out.print(f"static report: {report_dir / 'index.html'}")
    out.print(f"dashboard: neuron-audit dashboard -c {config_path}  (http://127.0.0.1:8050)")
    out.print(f"demo finished in {time.perf_counter() - t0:.1f} s")
    raise Exit(code)


@app.command(epilog=EXIT_CODES_HELP)
def run(config: str = ConfigOpt,
        model: Optional[str] = typer.Option(None, "--model", metavar="MODEL", help="Audit only this model (models[].name)."),
        version: Optional[str] = typer.Option(None, "--version", metavar="VERSION", help="Audit only this version of the model."),
        no_visuals: bool = typer.Option(False, "--no-visuals", help="Verdicts from probe-set statistics alone.")) -> None:
    """One audit now: the same Prefect flow the schedule runs, after the preflight. Versions whose
    weights, config, images and software match their last complete audit are recognised before any
    model is loaded and skipped (when all are, no Prefect server is started)."""
    summary, _ = _audit(config, model, version, with_visuals=not no_visuals)
    raise Exit(_print_summary(summary))


@app.command(epilog=EXIT_CODES_HELP)
def check(config: str = ConfigOpt,
          model: Optional[str] = typer.Option(None, "--model", help="Check only this model."),
          version: Optional[str] = typer.Option(None, "--version", help="Check only this version.")) -> None:
    """The preflight alone (handy in CI): architectures, checkpoints, layers and indices, reference and
    probe images, registered models and versions, the database, artifact folder and MLflow store, all
    checked against the real world. Every problem is named with its key and value. Exit 0 or 2
    (4 when the store cannot be reached); nothing is stored but the preflight's own cache."""
    checked = _preflight(config, model, version)
    cfg = checked.cfg
    models = [m for m in cfg.models if (m.name == model if model else m.enabled)]
    n_versions = len(checked.identities)
    n_neurons = sum(len(m.neurons) for m in models)
    out.print(f"{config}: OK — {len(models)} model(s), {n_versions} version(s), {n_neurons} neuron(s) checked; "
              f"store {cfg.store.database} writable")


@app.command(epilog=EXIT_CODES_HELP)
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
    checked = _preflight(config)
    cfg = checked.cfg
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
              method: str = typer.Option("vital", "--method", metavar="METHOD", help="vital | fourier | maco | deepinversion")) -> None:
    """Render one visualization, without storage."""
    from PIL import Image

    from audit.config import check_neurons_against_model
    from audit.pipeline import vital_settings

    from . import runtime

    if method not in ("vital", "fourier", "maco", "deepinversion"):
        _fail(f"--method: unknown method {method!r}; valid: vital, fourier, maco, deepinversion")
    if steps is not None and steps < 1:
        _fail(f"--steps: {steps} must be at least 1")
    cfg = _config(config)
    mcfg = cfg.model(model)
    n = mcfg.neuron(neuron)
    loaded = runtime.load_version(config, model, version)
    problem = check_neurons_against_model(mcfg, loaded.model).get(n.id)
    if problem:
        _fail(problem)
    settings = vital_settings(mcfg)
    if steps is not None:
        settings = settings.model_copy(update={"steps": steps})
    settings = settings.resolved(loaded.model)
    from .logs import get_logger, stage

    with _Progress(), stage("render", f"{method} {n.id} of {model} v{version} ({settings.steps} steps)",
                            get_logger("visualize")) as st:
        viz = _render_one(cfg, mcfg, n, loaded.model, settings, seed, method)
        st.count(**{"steps run": len(viz.loss_history)})
    out_png.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(viz.image).save(out_png)
    out.print(f"wrote {out_png} ({viz.seconds:.1f} s, final loss {viz.loss_history[-1] if viz.loss_history else float('nan'):.4g})")
    if viz.mask is not None:
        mask_path = out_png.with_name(out_png.stem + "_mask.png")
        Image.fromarray((viz.mask * 255).astype("uint8")).save(mask_path)
        out.print(f"wrote {mask_path}")


def _render_one(cfg, mcfg, n, model, settings, seed, method):
    """One visualization of neuron `n` with resolved VITAL `settings` (the baselines use its
    resolution and steps); reference warnings go to stderr."""
    from audit.pipeline import neuron_target, reference_recipe, references_for

    from . import progress, runtime

    target = neuron_target(n)
    size = settings.resolution
    if method == "vital":
        from audit.stats import neuron_activations
        from audit.vital import VitalRequest, render_vital

        probe = runtime.probe_set(cfg, mcfg, model)
        values = neuron_activations(model, probe, [target])[n.id].max
        refs = references_for(n, model, probe.images, values, size=size, recipe=reference_recipe(mcfg, n.kind),
                              seed=seed, base_dir=cfg.base_dir, probe_groups=probe.groups)
        for warning in refs.warnings:
            err.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
        err.print(f"references: {refs.description}", highlight=False, soft_wrap=True)
        return render_vital(model, [VitalRequest(target, refs.images, refs.use_relevance)], settings, seed=seed,
                            progress=progress.step_reporter(f"VITAL {n.id}", settings.steps))[0]
    from audit import baselines

    if method == "fourier":
        return baselines.render_fourier(model, [target], size=size, steps=settings.steps, seed=seed,
                                        progress=progress.step_reporter(f"Fourier {n.id}", settings.steps))[0]
    if method == "deepinversion":
        from audit.deepinversion import render_deepinversion

        return render_deepinversion(model, [target], size=size, steps=settings.steps, seed=seed,
                                    progress=progress.step_reporter(f"DeepInversion {n.id}", settings.steps))[0]
    probe = runtime.probe_set(cfg, mcfg, model)
    return baselines.render_maco(model, [target], reference_images=probe.images, size=size, steps=settings.steps,
                                 seed=seed, progress=progress.step_reporter(f"MACO {n.id}", settings.steps))[0]


@app.command(epilog=EXIT_CODES_HELP)
def compare(config: str = ConfigOpt,
            model: str = typer.Option(..., "--model", metavar="MODEL", help="Model name from the config (models[].name)."),
            baseline: str = typer.Option(..., "--baseline", metavar="V1", help="The version compared against (the older one)."),
            candidate: str = typer.Option(..., "--candidate", metavar="V2", help="The version under audit (the newer one)."),
            json_out: Optional[Path] = typer.Option(None, "--json", metavar="OUT",
                                                    help="Write the compare report here (JSON, docs/compare-report.md)."),
            no_visuals: bool = typer.Option(False, "--no-visuals", help="Skip the statistics that need visualizations.")) -> None:
    """Compare two versions of one model, computing what the store lacks. Exit 1 on any FAIL,
    3 when some neuron could not be compared."""
    checked = _preflight(config, model, [baseline, candidate])
    from . import work
    from .runlock import exclusive_store

    summary: dict = {"versions": [], "reports": []}
    with exclusive_store(checked.cfg.store.database, "compare",
                         notify=lambda m: err.print(f"[yellow]waiting:[/] {m}")), _Progress() as prog:
        for v in (baseline, candidate):
            prog(f"version {v}", 0, 3)
            work.register_version(config, model, v)
            o = work.probe_statistics(config, model, v, work.VersionOutcome(model, v))
            prog(f"version {v}", 2, 3)
            if not no_visuals:
                work.render_visualizations(config, model, v, None, o)
            prog(f"version {v}", 3, 3)
            summary["versions"].append(vars(o))
        report = work.compare_pair(config, model, baseline, candidate, None, with_visuals=not no_visuals)
    public = {k: v for k, v in report.items() if k != "drift_ids"}
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(public, indent=2, default=str))
        err.print(f"wrote {json_out}")
    summary["reports"].append(report)
    raise Exit(_print_summary(summary))


@app.command(epilog=EXIT_CODES_HELP)
def gate(config: str = ConfigOpt,
         model: str = typer.Option(..., "--model", metavar="MODEL", help="Model name from the config (models[].name)."),
         candidate: str = typer.Option(..., "--candidate", metavar="SOURCE",
                                       help="The candidate's weights: a checkpoint path, file:PATH, builtin:NAME, "
                                            "models:/NAME/VERSION or models:/NAME@ALIAS."),
         against: str = typer.Option("champion", "--against", metavar="VERSION",
                                     help="Version compared against: `champion` (the model's), a version name, or "
                                          "a registry alias."),
         summary_file: Optional[Path] = typer.Option(None, "--summary", metavar="FILE",
                                                     help="Append a Markdown summary here (e.g. $GITHUB_STEP_SUMMARY)."),
         json_out: Optional[Path] = typer.Option(None, "--json", metavar="OUT", help="Write the compare report here."),
         no_visuals: bool = typer.Option(False, "--no-visuals", help="Verdicts from probe-set statistics alone."),
         progress: bool = typer.Option(True, help="Show a progress display.")) -> None:
    """CI gate: audit a candidate checkpoint against the champion, reusing everything stored.
    Exit 0 PASS or WARN, 1 FAIL, 2 bad input (nothing stored), 3 some neuron could not be audited
    (docs/gate.md)."""
    from dashboards.ui_links import ui_urls
    from storage.links import mlflow_run_url

    from . import runtime
    from .gate import plan_gate, run_gate, write_summary
    from .outcome import describe, not_audited

    _cfg, target = plan_gate(config, model, candidate, against)
    for note in target.notes:
        err.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
    with _Progress(progress) as prog:
        result = run_gate(config, target, with_visuals=not no_visuals, progress=prog,
                          preflight=lambda path, m, vs: _preflight(path, m, vs),
                          notify=lambda m: err.print(f"[yellow]waiting:[/] {m}"))
    for w in result.warnings:
        err.print(f"[yellow]warning:[/] {w}", highlight=False, soft_wrap=True)
    code = _print_summary(result.summary)
    report = (result.summary.get("reports") or [{}])[0]
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps({k: v for k, v in report.items() if k != "drift_ids"}, indent=2, default=str))
        err.print(f"wrote {json_out}")
    if summary_file:
        cfg = runtime.config(config)
        mlflow_ui, _ = ui_urls(cfg)
        store = runtime.store(config)
        write_summary(result, summary_file, store=store, dashboard_url=cfg.ui.dashboard,
                      mlflow_run_url=mlflow_run_url(mlflow_ui, None, result.mlflow_run_id),
                      not_audited=[describe(d) for d in not_audited(result.summary)])
        err.print(f"summary: {summary_file}")
    raise Exit(code)


@app.command()
def listen(config: str = ConfigOpt,
           host: Optional[str] = typer.Option(None, "--host", metavar="HOST",
                                              help="Bind address (default: registry_webhooks.host, 127.0.0.1)."),
           port: Optional[int] = typer.Option(None, "--port", metavar="PORT",
                                              help="Port (default: registry_webhooks.port, 8765)."),
           prefect_port: int = typer.Option(4200, "--prefect-port", metavar="PORT",
                                            help="Port of the Prefect server started when PREFECT_API_URL answers "
                                                 "nothing.")) -> None:
    """Audit on registration: receive MLflow registry webhooks (HMAC-verified with the secret in
    the environment variable registry_webhooks.secret_env) and audit each new version of a
    configured registered model against its predecessor and the champion, tagging it with the
    verdict; alert when the guarded alias lands on a FAILed version. Blocks until Ctrl-C
    (docs/gate.md)."""
    from .deploy import ensure_prefect_server
    from .listen import Listener, log_to_stderr, prefect_home, webhook_secret

    secret = webhook_secret(_config(config))         # before the preflight: nothing is touched without it
    cfg = _preflight(config).cfg
    s = cfg.registry_webhooks
    api, proc = ensure_prefect_server(port=prefect_port, home=prefect_home(cfg))
    import os

    os.environ["PREFECT_API_URL"] = api
    log_to_stderr()
    try:
        with Listener(config, secret, host or s.host, port or s.port) as listener:
            err.print(f"listening for MLflow registry webhooks on {listener.url} (Prefect: {api}); "
                      f"model_version.created: {s.on_version_created}; alias {s.guarded_alias!r}: "
                      f"{s.on_alias_created}", highlight=False, soft_wrap=True)
            listener.thread.join()
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)


@app.command()
def watch(config: str = ConfigOpt, model: str = typer.Option(..., "--model", metavar="MODEL", help="The model to watch."),
          images: Path = typer.Option(..., "--images", metavar="DIR", help="Folder of the batch's production images."),
          version: Optional[str] = typer.Option(None, "--version", metavar="VERSION",
                                                help="Model version (default: the champion)."),
          batch_id: Optional[str] = typer.Option(None, "--batch-id", metavar="ID",
                                                 help="Batch id (default: the folder's name); a batch id seen before "
                                                      "is updated in place."),
          json_out: Optional[Path] = typer.Option(None, "--json", metavar="FILE",
                                                  help="Write the watch report here.")) -> None:
    """Feature drift on a production batch: every registered neuron against the reference window.
    Exit 0 without FAIL, 1 with a FAIL, 2 on bad input."""
    from .watch import run_watch_command

    raise Exit(run_watch_command(config, model, images, version, batch_id, json_out, out, err))


MlflowUiOpt = typer.Option(None, "--mlflow-ui", metavar="URL",
                           help="MLflow UI base URL to link runs to (default: config ui.mlflow, or the tracking URI "
                                "when it is http).")
PrefectUiOpt = typer.Option(None, "--prefect-ui", metavar="URL",
                            help="Prefect UI base URL to link flow runs to (default: config ui.prefect, "
                                 "PREFECT_UI_URL, or PREFECT_API_URL without /api).")


def _export_report(config: str, out_dir: Path, mlflow_ui: str | None = None, prefect_ui: str | None = None) -> Path:
    """The static HTML report, from the store opened read-only."""
    from dashboards.export import export_static
    from dashboards.ui_links import ui_urls

    from . import runtime

    cfg = runtime.config(config)
    mlflow_url, prefect_url = ui_urls(cfg, mlflow_ui, prefect_ui)
    store = runtime.read_store(config)
    try:
        return export_static(store, str(cfg.resolve_path(cfg.store.artifacts)), out_dir,
                             mlflow_ui_url=mlflow_url, prefect_ui_url=prefect_url)
    finally:
        store.close()


@app.command()
def report(config: str = ConfigOpt,
           out_dir: Path = typer.Option(..., "--out", metavar="DIR", help="Folder for the static HTML."),
           mlflow_ui: Optional[str] = MlflowUiOpt, prefect_ui: Optional[str] = PrefectUiOpt) -> None:
    """Write the dashboard's views as static HTML, openable from disk."""
    index = _export_report(config, out_dir, mlflow_ui, prefect_ui)
    out.print(f"static report: {index}")


@app.command()
def dashboard(config: str = ConfigOpt,
              host: str = typer.Option("127.0.0.1", metavar="HOST", help="Bind address (loopback by default)."),
              port: int = typer.Option(8050, metavar="PORT", help="Port to listen on."),
              mlflow_ui: Optional[str] = MlflowUiOpt, prefect_ui: Optional[str] = PrefectUiOpt) -> None:
    """Serve the read-only web dashboard."""
    from dashboards.app import serve as serve_dashboard
    from dashboards.ui_links import ui_urls

    from . import runtime

    cfg = runtime.config(config)
    mlflow_url, prefect_url = ui_urls(cfg, mlflow_ui, prefect_ui)
    store = runtime.read_store(config)          # read-only: the dashboard never writes
    out.print(f"dashboard on http://{host}:{port}")
    serve_dashboard(store, str(cfg.resolve_path(cfg.store.artifacts)), host=host, port=port,
                    mlflow_ui_url=mlflow_url, prefect_ui_url=prefect_url)


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
def evaluate(config: str = ConfigOpt,
             model: str = typer.Option(..., "--model", metavar="MODEL", help="Model name from the config (models[].name)."),
             version: str = typer.Option(..., "--version", metavar="VERSION",
                                         help="Version whose stored visualizations are scored."),
             baselines: bool = typer.Option(False, "--baselines",
                                            help="Also render Fourier and MACO (seed 0) and score them the same way."),
             steps: Optional[int] = typer.Option(None, "--steps", metavar="N",
                                                 help="Steps of the baseline renders (default: the VITAL steps).")) -> None:
    """Quality of the stored visualizations. Class neurons: self top-1, transfer top-1/top-5 on the
    other built-in models, Fréchet distance to the reference photographs. Inner neurons: the
    activation percentile among real probe images, the specificity rank in the layer, the feature
    distance to the top real patches."""
    from audit.pipeline import vital_settings
    from audit.quality import evaluate_class_visualizations, evaluate_inner_visualizations

    from . import runtime
    from .work import stored_visualizations

    if steps is not None and steps < 1:
        _fail(f"--steps: {steps} must be at least 1")
    cfg = _config(config)
    mcfg = cfg.model(model)
    store = runtime.store(config)
    loaded = runtime.load_version(config, model, version)
    probe = runtime.probe_set(cfg, mcfg, loaded.model)

    def score(images_of) -> dict:
        return {"class": evaluate_class_visualizations(store_images=images_of, model=loaded.model, model_cfg=mcfg,
                                                       base_dir=cfg.base_dir),
                "inner": evaluate_inner_visualizations(images_of, loaded.model, mcfg, probe.images)}

    result = {"model": model, "version": str(version),
              "vital": score(lambda nid: list(stored_visualizations(store, model, nid, [version])[str(version)].values()))}
    if baselines:
        settings = vital_settings(mcfg)
        settings = settings.model_copy(update={"steps": steps or settings.steps}).resolved(loaded.model)
        for method in ("fourier", "maco"):
            with _Progress():
                rendered = {n.id: [_render_one(cfg, mcfg, n, loaded.model, settings, 0, method).image]
                            for n in mcfg.neurons}
            result[method] = score(lambda nid, r=rendered: r.get(nid, []))
    out.print_json(json.dumps(result, default=str))


@db_app.command("upgrade")
def db_upgrade(config: str = ConfigOpt) -> None:
    """Apply the database migrations (creates the schema on an empty database)."""
    from storage.migrate import current, upgrade

    cfg = _config(config)
    upgrade(cfg.store.database)
    out.print(f"database at revision {current(cfg.store.database)}")


def _log_dir() -> Path:
    """Where tracebacks of internal errors go: $NEURON_AUDIT_LOG_DIR, else $XDG_STATE_HOME/neuron-audit/logs
    (~/.local/state/...), else the temporary folder."""
    import os
    import tempfile

    for candidate in (os.environ.get("NEURON_AUDIT_LOG_DIR"),
                      os.path.join(os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state"),
                                   "neuron-audit", "logs"),
                      os.path.join(tempfile.gettempdir(), "neuron-audit-logs")):
        if candidate:
            try:
                Path(candidate).mkdir(parents=True, exist_ok=True)
                return Path(candidate)
            except OSError:
                continue
    return Path(tempfile.gettempdir())


def _write_log(exc: BaseException, argv: list[str] | None) -> Path | None:
    """The traceback of `exc` in a new log file; its path (None when no file could be written)."""
    import datetime
    import os
    import traceback

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = _log_dir() / f"neuron-audit-{stamp}-{os.getpid()}.log"
    try:
        with open(path, "w") as fh:
            fh.write(f"neuron-audit {' '.join(argv if argv is not None else sys.argv[1:])}\n")
            fh.write("".join(traceback.format_exception(exc)))
        return path
    except OSError:
        return None


def _infrastructure_errors() -> tuple[type[BaseException], ...]:
    """Errors of the surroundings (exit 4 with their own one-line message): the database or MLflow
    unreachable, the store held too long by another audit, a Prefect server that does not start."""
    from storage.errors import StoreUnavailableError, TrackingUnavailableError

    from .preflight import PreflightUnavailable
    from .runlock import StoreBusyError

    return (StoreUnavailableError, TrackingUnavailableError, PreflightUnavailable, StoreBusyError)


def _restore_logging(saved_env: dict) -> None:
    """After the exit messages: stderr back to the console, the log handler removed and the environment as it
    was (the logging choice of one in-process call does not leak into the next)."""
    import os

    from . import logs

    if err.file is not sys.stderr and hasattr(err.file, "flush"):
        err.file.flush()
    err.file = None
    err.soft_wrap = False
    logs.unconfigure()
    for k, v in saved_env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def main(argv: list[str] | None = None) -> None:
    """Console-script entry: maps outcomes and errors to the exit codes of docs/cli.md (flows/outcome.py)."""
    import os

    from . import logs

    saved_env = {k: os.environ.get(k) for k in (logs.JSON_ENV, logs.QUIET_ENV)}
    try:
        _main(argv)
    finally:
        _restore_logging(saved_env)


def _main(argv: list[str] | None) -> None:
    import click

    from audit.errors import AuditInputError

    from .termination import graceful_termination, stop_exit_code

    try:
        with graceful_termination():
            app(args=argv, standalone_mode=False)
    except Exit as e:
        sys.exit(e.code)
    except AuditInputError as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.exceptions.ClickException as e:      # usage errors: unknown option, missing argument
        e.show()
        sys.exit(2)
    except SystemExit:
        raise
    except BaseException as e:
        stopped = stop_exit_code(e)          # the stop rules: flows/termination.py
        if stopped is not None:
            err.print(f"[bold red]interrupted:[/] {e.__class__.__name__}; the run is marked interrupted and "
                      "finished results are kept", highlight=False)
            sys.exit(stopped)
        if not isinstance(e, Exception):
            raise
        log = _write_log(e, argv)
        where = f" (traceback: {log})" if log else ""
        first = (str(e).strip().splitlines() or [""])[0]
        if isinstance(e, _infrastructure_errors()):
            err.print(f"[bold red]error:[/] infrastructure: {first}{where}", highlight=False, soft_wrap=True)
        else:
            err.print(f"[bold red]error:[/] internal error: {e.__class__.__name__}: {first}{where}",
                      highlight=False, soft_wrap=True)
        sys.exit(4)
    sys.exit(0)


if __name__ == "__main__":
    main()
