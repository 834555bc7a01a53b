"""A report as an e-mail: subject, HTML body and plain-text alternative, from Jinja2 templates
that an operator may override from a directory (``OUTBOX_TEMPLATE_DIR``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from jinja2 import (
    BaseLoader,
    ChoiceLoader,
    Environment,
    FileSystemLoader,
    PackageLoader,
    StrictUndefined,
    Template,
    TemplateError,
    TemplateSyntaxError,
    select_autoescape,
)

from config.errors import ReportTemplateError
from tasks.reports.model import ItemOutcome, RunReport, RunStatus

__all__ = ["TEMPLATE_NAMES", "RenderedReport", "ReportRenderer"]

# The templates an operator may override, each by a file of the same name.
TEMPLATE_NAMES = ("subject.txt", "report.html", "report.txt")

_STATUS_COLORS = {
    RunStatus.PASSED: "#1a7f37",
    RunStatus.FAILED: "#cf222e",
    RunStatus.PARTIALLY_PASSED: "#9a6700",
    RunStatus.STOPPED: "#57606a",
    RunStatus.ERROR: "#cf222e",
}
_OUTCOME_COLORS = {
    ItemOutcome.FAILED: "#cf222e",
    ItemOutcome.ERROR: "#cf222e",
    ItemOutcome.SKIPPED: "#57606a",
    ItemOutcome.PASSED: "#1a7f37",
}


@dataclass(frozen=True, slots=True)
class RenderedReport:
    subject: str
    html: str
    text: str


def _duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds, 1), 60)
    hours, minutes = divmod(int(minutes), 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {int(rest):02d} s"
    return f"{rest:.1f} s"


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S %Z").strip()


class ReportRenderer:
    """Renders with the operator's templates first, then outbox's own. HTML is autoescaped:
    a flow named ``<script>`` arrives as text."""

    def __init__(self, template_dir: Path | None = None) -> None:
        loaders: list[BaseLoader] = [PackageLoader("tasks.reports", "templates")]
        if template_dir is not None:
            loaders.insert(0, FileSystemLoader(template_dir))
        self._environment = Environment(
            loader=ChoiceLoader(loaders),
            autoescape=select_autoescape(["html"]),
            undefined=StrictUndefined,
            keep_trailing_newline=True,
        )
        self._environment.filters.update(
            duration=_duration,
            when=_when,
            status_color=_STATUS_COLORS.__getitem__,
            outcome_color=_OUTCOME_COLORS.__getitem__,
        )
        # Loaded now: a template that does not parse is one clear error, found before any
        # run is rendered with it.
        self._templates = {name: self._load(name) for name in TEMPLATE_NAMES}

    def _load(self, name: str) -> Template:
        try:
            return self._environment.get_template(name)
        except TemplateSyntaxError as exc:
            raise ReportTemplateError(
                f"report template {exc.filename or name}, line {exc.lineno}: {exc.message}"
            ) from None

    def render(self, report: RunReport) -> RenderedReport:
        context = {"report": report, "counts": report.counts, "items": report.items_in_report_order}
        rendered = {}
        for name, template in self._templates.items():
            try:
                rendered[name] = template.render(context)
            except (TemplateError, KeyError, TypeError, ValueError) as exc:
                # An operator's template naming what the report lacks, or a filter misused.
                raise ReportTemplateError(
                    f"report template {template.filename or name} failed: {exc}"
                ) from None
        return RenderedReport(
            # One line whatever the template holds: folded whitespace, no line breaks.
            subject=" ".join(rendered["subject.txt"].split())[:998],
            html=rendered["report.html"],
            text=rendered["report.txt"],
        )
