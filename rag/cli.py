"""The ``rag`` command: a thin layer over ``rag.pipeline.Rag``.

Data goes to stdout, progress and diagnostics to stderr. A ``RagError`` (something the user can
fix) becomes one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import click

from rag.errors import RagError
from rag.settings import Settings


def fail(message: str, code: int = 2) -> NoReturn:
    """Print one line on stderr and exit."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn library errors into one line and exit 2; Ctrl-C into exit 130."""
    try:
        yield
    except RagError as exc:
        fail(str(exc), exc.exit_code)
    except OSError as exc:  # a full disk, a folder that may not be written: say which, no traceback
        where = f" ({exc.filename})" if exc.filename else ""
        fail(f"{exc.strerror or exc}{where}", 1)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


def load_settings() -> Settings:
    """Settings from the environment and .env, or one line saying which variable is wrong."""
    from pydantic import ValidationError

    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        name = "RAG_" + str(first["loc"][0]).upper() if first["loc"] else "settings"
        fail(f"{name}: {first['msg']}")
    except UnicodeDecodeError:
        fail(".env (in this directory) is not UTF-8 text: fix or remove it")
    except OSError as exc:
        fail(f"cannot read .env: {exc.strerror}")


def make_rag() -> Any:
    """The library object for the current environment."""
    from rag.pipeline import Rag

    return Rag(load_settings())


def progress_printer() -> Callable[[int, int], None]:
    """Ingest progress on stderr: papers stored, papers/s and the time left; a bar rewritten in
    place at a terminal, else one line per stored batch (for logs)."""
    tty = sys.stderr.isatty()
    started = time.monotonic()

    def show(done: int, total: int) -> None:
        elapsed = max(time.monotonic() - started, 1e-9)
        rate = done / elapsed
        left = (total - done) / rate if rate > 0 else 0.0
        eta = time.strftime("%H:%M:%S", time.gmtime(left))
        line = f"{done}/{total} papers, {rate:,.0f} papers/s, {eta} left"
        if tty:
            bar = "#" * int(30 * done / max(total, 1))
            end = "\n" if done >= total else ""
            click.echo(f"\ringest [{bar:-<30}] {line}", err=True, nl=False)
            click.echo(end, err=True, nl=False)
        else:
            click.echo(f"stored {line}", err=True)

    return show


def progress_line(unit: str) -> Callable[[int, int], None]:
    """Progress on stderr: a rewritten line at a terminal, every 10% in logs."""
    tty = sys.stderr.isatty()

    def show(done: int, total: int) -> None:
        if tty:
            click.echo(f"\r{done}/{total} {unit}", err=True, nl=done >= total)
        elif done == total or done % max(1, total // 10) == 0:
            click.echo(f"{done}/{total} {unit}", err=True)

    return show


@click.group()
@click.version_option(package_name="rag-papers")
def cli() -> None:
    """Ask questions about a collection of research-paper abstracts, with cited answers."""


@cli.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object of counts on stdout.")
@click.option("--rebuild", is_flag=True, help="Delete the index first (e.g. after a model change).")
def ingest(paths: tuple[Path, ...], as_json: bool, rebuild: bool) -> None:
    """Index papers: PATHS are listing .txt files, JSONL of papers, arXiv metadata JSONL, or
    directories of them. With no PATHS, the bundled corpus. Re-running embeds only what changed."""
    with user_errors():
        rag = make_rag()
        stats = rag.ingest(list(paths) or None, rebuild=rebuild, progress=progress_printer())
    for warning in stats.warnings[:MAX_WARNINGS]:
        click.echo(f"warning: {warning}", err=True)
    if len(stats.warnings) > MAX_WARNINGS:
        click.echo(f"warning: ... and {len(stats.warnings) - MAX_WARNINGS} more", err=True)
    counts = {
        "papers": stats.papers,
        "chunks": stats.chunks,
        "embedded": stats.embedded,
        "skipped": stats.skipped,
        "replaced": stats.replaced,
        "duplicates": stats.duplicates,
        "truncated": stats.truncated,
        "seconds": stats.seconds,
        "phases": stats.phases,
    }
    if as_json:
        click.echo(json.dumps(counts))
    else:
        dropped = f", {stats.duplicates} repeated papers dropped" if stats.duplicates else ""
        cut = f", {stats.truncated} abstracts cut" if stats.truncated else ""
        click.echo(
            f"{stats.papers} papers, {stats.chunks} chunks: {stats.embedded} embedded, "
            f"{stats.skipped} unchanged, {stats.replaced} papers replaced{dropped}{cut} "
            f"({stats.seconds:.1f} s)"
        )


def print_answer(rag: Any, question: str, k: int | None, model: str | None = None) -> None:
    """Stream an answer to stdout, then its sources."""
    from rag.pipeline import AskResult

    result = None
    for item in rag.stream(question, k, model=model):
        if isinstance(item, AskResult):
            result = item
        else:
            click.echo(item, nl=False)
    assert result is not None
    click.echo()
    if result.citations:
        click.echo("\nSources:")
        for c in result.citations:
            click.echo(f"  [{c.n}] {c.title}")
    for note in result.notes():
        click.echo(f"note: {note}", err=True)


MAX_WARNINGS = 10  # warning lines an ingest prints; the rest are counted

MODEL_HELP = "Chat model: 'offline' (extractive, no LLM) or a model of the configured LLM endpoint."


@cli.command()
@click.argument("question")
@click.option("-k", "k", type=int, default=None, help="Distinct papers to retrieve (default 8).")
@click.option("--model", "model", default=None, help=MODEL_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def ask(question: str, k: int | None, model: str | None, as_json: bool) -> None:
    """Answer QUESTION from the indexed papers, citing them as [n].

    With OPENAI_API_KEY or OPENAI_BASE_URL set, an LLM writes the answer; otherwise (or with
    --model offline) the offline extractive answerer quotes the abstracts."""
    with user_errors():
        rag = make_rag()
        if as_json:
            result = rag.ask(question, k, model=model)
            click.echo(json.dumps(result.to_dict(), ensure_ascii=False))
        else:
            print_answer(rag, question, k, model)


class OneLineErrors(click.Command):
    """A command whose bad options are one ``error:`` line and exit 2, like every other error."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            fail(exc.format_message())


def port_number(ctx: click.Context, param: click.Parameter, value: int) -> int:
    """``--port``'s check (click's own range message reads poorly for a port)."""
    if not 1 <= value <= 65535:
        raise click.BadParameter(f"{value} is not a port number (1-65535)")
    return value


@cli.command(cls=OneLineErrors)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to serve on (0.0.0.0: every network interface; set RAG_UI_AUTH first).",
)
@click.option(
    "--port",
    type=int,
    default=7860,
    show_default=True,
    callback=port_number,
    help="Port to serve on.",
)
@click.option(
    "--share",
    is_flag=True,
    help="Also serve on a public Gradio link (needs internet; set RAG_UI_AUTH first).",
)
def chat(host: str, port: int, share: bool) -> None:
    """Serve the chat in the browser, at http://127.0.0.1:7860 by default.

    Builds the index from the bundled corpus first if there is none. RAG_UI_AUTH="user:password"
    asks for a login. Ctrl-C stops it.
    """
    with user_errors():
        rag = make_rag()
        from rag import ui  # gradio: imported only by this command

        ui.check_address(host, port)  # before the index build, which can take a minute
        if not rag.has_index() or rag.index.count() == 0:
            click.echo("No index yet: indexing the bundled corpus (once).", err=True)
            rag.ingest(progress=progress_printer())
        if rag.settings.ui_login is None and (
            share or host not in ("127.0.0.1", "localhost", "::1")
        ):
            click.echo(
                "warning: no login is set (RAG_UI_AUTH), and others can reach this app", err=True
            )
        app = ui.build_app(rag, rag.settings)
        try:
            local_url, share_url = ui.launch(app, rag.settings, host, port, share)
        except OSError as exc:  # taken between the check and now
            fail(f"cannot serve on {host}:{port}: {exc.strerror or exc}")
        click.echo(f"Chat running on {local_url} (Ctrl-C to stop)")
        if share_url:
            click.echo(f"Public link: {share_url}")
        elif share:
            click.echo("warning: no public link could be made (is there internet?)", err=True)
        app.block_thread()  # until Ctrl-C, which closes only the HTTP server...
        app.close(verbose=False)  # ...so also the queue, its workers and the heartbeat streams


@cli.command("eval")
@click.argument("datasets", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(path_type=Path),
    help="Directory for the results.",
)
@click.option("-k", "k", type=int, default=None, help="Distinct papers to retrieve (default 8).")
@click.option("--model", "model", default=None, help=MODEL_HELP)
@click.option(
    "--retriever",
    type=click.Choice(["hybrid", "dense", "bm25"]),
    default="hybrid",
    show_default=True,
    help="Retrieval: dense + BM25 fused, or one of them alone.",
)
@click.option(
    "--judge",
    type=click.Choice(["auto", "llm", "proxy"]),
    default="auto",
    show_default=True,
    help="Who judges support: the configured LLM (auto, when one is set) or the lexical proxy.",
)
@click.option(
    "--gate",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="JSON of metric thresholds; exit 1 when a metric is past one (CI).",
)
@click.option(
    "--jobs",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Questions asked at once (for an LLM endpoint that serves several).",
)
def evaluate(
    datasets: tuple[Path, ...],
    out: Path,
    k: int | None,
    model: str | None,
    retriever: str,
    judge: str,
    gate: Path | None,
    jobs: int,
) -> None:
    """Score answers to gold questions: DATASETS are JSONL files of {"id", "question", "type",
    "gold_titles", "partial_titles"}. Writes results.jsonl (as it goes), metrics.json, report.md
    and plots into --out. A question that fails is an error row, counted; the run goes on."""
    from rag.eval_report import write_run
    from rag.evaluation import check_gate, run_eval

    with user_errors():
        rag = make_rag()
        partial: list[Any] = []  # results.jsonl, opened at the first answer (a bad dataset: none)

        def sink(row: dict[str, Any]) -> None:
            if not partial:
                try:
                    out.mkdir(parents=True, exist_ok=True)
                    partial.append((out / "results.jsonl").open("w", encoding="utf-8"))
                except OSError as exc:
                    fail(f"cannot write into {out}: {exc.strerror}")
            partial[0].write(json.dumps(row, ensure_ascii=False) + "\n")
            partial[0].flush()

        try:
            run = run_eval(
                rag, datasets, k, retriever, model, judge, progress_line("questions"), jobs, sink
            )
        finally:
            for handle in partial:
                handle.close()
        metrics = write_run(run, out)
        failures = check_gate(metrics, gate) if gate else []
    for title in run.missing_titles:
        click.echo(f"warning: gold title not in the index: {title}", err=True)
    overall, by_type = metrics["overall"], metrics["by_type"]

    def figure(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    click.echo(
        f"citation F1 {figure(overall['citation_f1'])} (single "
        f"{figure(by_type['single']['citation_f1'])}, list {figure(by_type['list']['citation_f1'])}"
        f", comparison {figure(by_type['comparison']['citation_f1'])}); abstention accuracy "
        f"{figure(overall['abstention_accuracy'])}; metadata declined "
        f"{figure(overall['metadata_declined'])}; false abstentions "
        f"{figure(overall['false_abstention_rate'])}; report: {out / 'report.md'}"
    )
    for failure in failures:
        click.echo(f"gate: {failure}", err=True)
    failed = [r for r in run.results if "error" in r]
    if failed:
        click.echo(
            f"error: {len(failed)} of {len(run.results)} questions failed and were not scored "
            f"(their rows in results.jsonl say why; the first: {failed[0]['error']})",
            err=True,
        )
    if failures or failed:
        sys.exit(1)


@cli.command()
@click.argument("datasets", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Where to write the policy (rag/data/policy.json is the shipped one; RAG_POLICY reads "
    "another).",
)
@click.option(
    "--folds",
    type=click.IntRange(2, 20),
    default=5,
    show_default=True,
    help="Cross-validation folds.",
)
def fit(datasets: tuple[Path, ...], out: Path, folds: int) -> None:
    """Fit the answering policy to gold questions: DATASETS are JSONL files as for `rag eval`.

    Learns the question-intent model, the citation model and its thresholds with cross-validation
    grouped by question (needs scikit-learn: pip install 'rag-papers[fit]'). Never pass the
    questions you evaluate on."""
    from rag.fit import run_fit

    with user_errors():
        rag = make_rag()
        policy = run_fit(rag, datasets, folds, progress=progress_line("questions"))
        try:
            policy.save(out)
        except OSError as exc:
            fail(f"cannot write {out}: {exc.strerror}")
    cv = policy.provenance["cross_validated"]
    click.echo(
        f"declines below P {policy.decline_single:.2f} (single), {policy.decline_list:.2f} (list); "
        f"out of fold: intent accuracy {cv['intent_accuracy']:.3f}, single F1 "
        f"{cv.get('single', 0):.3f}, list F1 {cv.get('list', 0):.3f}, abstention "
        f"{cv.get('abstain', 0):.3f}, false abstentions {cv['false_abstention']:.3f}; wrote {out}"
    )


@cli.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path, file_okay=False))
@click.option(
    "--out",
    "out",
    type=click.Path(path_type=Path),
    default=None,
    help="Also write compare.md and compare.png here.",
)
def compare(runs: tuple[Path, ...], out: Path | None) -> None:
    """Put several `rag eval` runs (their --out directories) side by side."""
    from rag.eval_report import compare as compare_runs

    with user_errors():
        click.echo(compare_runs(list(runs), out), nl=False)


@cli.group()
def feedback() -> None:
    """The citation judgements made in the chat (RAG_FEEDBACK_FILE): a gold set `rag eval` reads."""


@feedback.command("export")
@click.argument("out", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--from",
    "source",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="The judgements file (default: RAG_FEEDBACK_FILE, or feedback.jsonl in the index).",
)
def feedback_export(out: Path, source: Path | None) -> None:
    """Write the judgements as a clean gold file OUT: one question per line, gold keys only."""
    from rag.feedback import FeedbackFile

    with user_errors():
        settings = load_settings()
        store = FeedbackFile(source) if source else FeedbackFile.of(settings)
        count = store.export(out)
        click.echo(f"{count} judged question(s) from {store.path} written to {out}", err=True)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the checks as one JSON object.")
def doctor(as_json: bool) -> None:
    """Say which components are usable: embedder, store, index, LLM endpoint."""
    from rag.doctor import run_checks

    checks = run_checks(load_settings())
    if as_json:
        click.echo(json.dumps({c.name: {"ok": c.ok, "detail": c.detail} for c in checks}))
    else:
        for c in checks:
            click.echo(f"{'ok  ' if c.ok else 'FAIL'}  {c.name:<10} {c.detail}")
    sys.exit(0 if all(c.ok for c in checks) else 1)


def main() -> None:
    """Console-script entry point: a usage error (a bad option, a missing argument) is one
    ``error:`` line and exit 2, like every other error."""
    try:
        cli.main(prog_name="rag", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.UsageError as exc:
        hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx else ""
        fail(f"{exc.format_message()}{hint}")
    except click.ClickException as exc:
        fail(exc.format_message())
