"""Commands on the churn model: ``churnsync train``, ``churnsync evaluate`` and ``churnsync models list|show``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from churnsync.cli._app import AsOfOption, ConfigOption, JsonOption, app, console, load_config

models_app = typer.Typer(
    help="Inspect the model registry: saved churn models and the one in service.", no_args_is_help=True
)
app.add_typer(models_app, name="models")


@app.command()
def train(config: ConfigOption = None, as_of: AsOfOption = None, as_json: JsonOption = False) -> None:
    """Retrain the churn model, save it in the registry, and put it in service if it passes the quality gate."""
    from dataclasses import asdict

    from churnsync.pipeline import train_model

    settings = load_config(config)
    report = train_model(settings, as_of=as_of.date() if as_of else None)
    if as_json:
        console.print_json(json.dumps(asdict(report), default=str))
        return
    verdict = "put in service" if report.published else "NOT put in service (the previous model keeps scoring)"
    console.print(f"Trained {report.version} as of {report.as_of}: {verdict}.")
    console.print(f"Quality gate: {report.reason}")
    console.print(f"Champion: {report.champion_reason}")


@app.command()
def evaluate(
    config: ConfigOption = None,
    as_of: AsOfOption = None,
    out: Annotated[Path, typer.Option("--out", help="Folder for report.json and report.html.")] = Path("report"),
) -> None:
    """Backtest the churn model over the last horizon and write a JSON and a self-contained HTML quality report."""
    from churnsync.models.report import render_html
    from churnsync.pipeline import evaluate_model

    settings = load_config(config)
    report = evaluate_model(settings, as_of=as_of.date() if as_of else None)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    (out / "report.html").write_text(render_html(report), encoding="utf-8")
    table = Table(title=f"Backtest from {report['evaluation_cut']} ({report['customers']:,} customers)")
    for col in ("model", "AUC", "lift quality", "Brier"):
        table.add_column(col)
    for name, entry in report["churn"].items():
        m = entry["metrics"]
        brier = "—" if m["brier"] is None else f"{m['brier']:.4f}"
        table.add_row(name, f"{m['auc']:.3f}", f"{m['lift_quality']:.1%}", brier)
    console.print(table)
    console.print(f"Champion: {report['champion_reason']}")
    console.print(f"Wrote {out / 'report.json'} and {out / 'report.html'}")


@models_app.command("list")
def list_models(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """List saved churn models, newest first, with their validation figures and gate decision."""
    from churnsync.models.registry import ModelRegistry

    settings = load_config(config)
    rows = ModelRegistry(settings.model.registry_path).versions()
    if as_json:
        console.print_json(json.dumps(rows, default=str))
        return
    table = Table(title=f"Models in {settings.model.registry_path}")
    for col in ("version", "in service", "champion", "AUC", "lift quality", "gate"):
        table.add_column(col)
    for r in rows:
        m = r.get("metrics", {}).get(r.get("champion"), {})
        gate = r.get("gate", {})
        table.add_row(
            str(r.get("version")),
            "yes" if r.get("in_service") else "",
            str(r.get("champion")),
            f"{m.get('auc', float('nan')):.3f}",
            f"{m.get('lift_quality', float('nan')):.1%}",
            "published" if gate.get("published") else f"refused: {gate.get('reason', '')}",
        )
    console.print(table)


@models_app.command("show")
def show_model(
    version: Annotated[str, typer.Argument(help="The model version (see `churnsync models list`).")],
    config: ConfigOption = None,
) -> None:
    """Show one saved model: features, training window, metrics, gate decision, library versions (JSON)."""
    from churnsync.models.registry import ModelRegistry

    settings = load_config(config)
    record = ModelRegistry(settings.model.registry_path).load(version)
    console.print_json(json.dumps(record.meta, default=str))
