"""Commands on the churn model: ``churnsync train``, ``churnsync evaluate`` and ``churnsync models list|show``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from churnsync.cli._app import AsOfOption, ConfigOption, JsonOption, PredictionOption, app, console, load_config
from churnsync.config import DEFAULT_PREDICTION
from churnsync.errors import ConfigError, ModelError

models_app = typer.Typer(
    help="Inspect the model registry: saved churn models and the one in service.", no_args_is_help=True
)
app.add_typer(models_app, name="models")


@app.command()
def train(
    config: ConfigOption = None,
    as_of: AsOfOption = None,
    prediction: PredictionOption = None,
    as_json: JsonOption = False,
) -> None:
    """Retrain the churn model of every prediction (or of --prediction), save each in the registry, and put it in
    service if it passes its quality gate."""
    from dataclasses import asdict

    from churnsync.pipeline import train_models

    settings = load_config(config)
    reports = train_models(settings, as_of=as_of.date() if as_of else None, predictions=prediction)
    if as_json:
        rows = [asdict(r) for r in reports]
        console.print_json(json.dumps(rows[0] if len(rows) == 1 else rows, default=str))
        return
    for report in reports:
        verdict = "put in service" if report.published else "NOT put in service (the previous model keeps scoring)"
        which = "" if report.prediction == DEFAULT_PREDICTION else f"prediction {report.prediction}: "
        console.print(f"{which}Trained {report.version} as of {report.as_of}: {verdict}.")
        console.print(f"Quality gate: {report.reason}")
        console.print(f"Champion: {report.champion_reason}")


@app.command()
def evaluate(
    config: ConfigOption = None,
    as_of: AsOfOption = None,
    prediction: PredictionOption = None,
    out: Annotated[
        Path,
        typer.Option("--out", help="Folder for report.json and report.html (per prediction when several)."),
    ] = Path("report"),
) -> None:
    """Backtest the churn model over the last horizon and write a JSON and a self-contained HTML quality report."""
    from churnsync.models.report import render_html
    from churnsync.pipeline import evaluate_models

    settings = load_config(config)
    reports = evaluate_models(settings, as_of=as_of.date() if as_of else None, predictions=prediction)
    several = len(settings.prediction_specs()) > 1
    for name, report in reports.items():
        folder = out / name if several else out
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "report.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
        (folder / "report.html").write_text(render_html(report), encoding="utf-8")
        which = f"{name}: " if several else ""
        table = Table(title=f"{which}Backtest from {report['evaluation_cut']} ({report['customers']:,} customers)")
        for col in ("model", "AUC", "lift quality", "Brier"):
            table.add_column(col)
        for model_name, entry in report["churn"].items():
            m = entry["metrics"]
            brier = "—" if m["brier"] is None else f"{m['brier']:.4f}"
            table.add_row(model_name, f"{m['auc']:.3f}", f"{m['lift_quality']:.1%}", brier)
        console.print(table)
        console.print(f"Champion: {report['champion_reason']}")
        console.print(f"Wrote {folder / 'report.json'} and {folder / 'report.html'}")


@models_app.command("list")
def list_models(config: ConfigOption = None, prediction: PredictionOption = None, as_json: JsonOption = False) -> None:
    """List saved churn models, newest first, with their prediction, validation figures and gate decision."""
    from churnsync.models.registry import ModelRegistry

    settings = load_config(config)
    wanted = set(prediction or [])
    rows = [
        r
        for r in ModelRegistry(settings.model.registry_path).versions()
        if not wanted or r.get("prediction_name") in wanted
    ]
    if as_json:
        console.print_json(json.dumps(rows, default=str))
        return
    table = Table(title=f"Models in {settings.model.registry_path}")
    for col in ("version", "prediction", "in service", "champion", "AUC", "lift quality", "gate"):
        table.add_column(col)
    for r in rows:
        m = r.get("metrics", {}).get(r.get("champion"), {})
        gate = r.get("gate", {})
        table.add_row(
            str(r.get("version")),
            str(r.get("prediction_name")),
            "yes" if r.get("in_service") else "",
            str(r.get("champion")),
            f"{m.get('auc', float('nan')):.3f}",
            f"{m.get('lift_quality', float('nan')):.1%}",
            "published" if gate.get("published") else f"refused: {gate.get('reason', '')}",
        )
    console.print(table)


@models_app.command("show")
def show_model(
    version: Annotated[
        str | None,
        typer.Argument(help="The model version (see `churnsync models list`); default: the one in service."),
    ] = None,
    config: ConfigOption = None,
    prediction: PredictionOption = None,
) -> None:
    """Show one saved model: features, training window, metrics, gate decision, library versions (JSON).

    Without VERSION, the model in service of --prediction (or of the only prediction)."""
    from churnsync.models.registry import ModelRegistry

    settings = load_config(config)
    registry = ModelRegistry(settings.model.registry_path)
    names = [s.name for s in settings.select_predictions(prediction)]
    if version is None:
        if len(names) != 1:
            raise ConfigError(
                f"models show: which prediction? configured: {', '.join(names)}",
                remedy="Pass a VERSION or one --prediction NAME",
            )
        version = registry.in_service(names[0])
        if version is None:
            raise ModelError(
                f"model registry: no model in service for prediction '{names[0]}' in {registry.path}",
                remedy="Train one with `churnsync train`",
            )
    record = registry.load(version)
    if prediction and record.meta.get("prediction_name") not in names:
        raise ConfigError(
            f"models show: {version} belongs to prediction '{record.meta.get('prediction_name')}', "
            f"not {', '.join(names)}",
            remedy="Drop --prediction or pass a version of that prediction",
        )
    console.print_json(json.dumps(record.meta, default=str))
