"""The command line's shared parts: the group, options generated from the configs, one-line errors,
progress bars. Commands live in `data` (query and export) and `work` (collect, label, behaviour)."""

from __future__ import annotations

import functools
import os
import sys
import types
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from autointerp import __version__, store
from autointerp.analysis import render
from autointerp.errors import AutointerpError, BadInput, cause
from autointerp.records import ProgressEvent

DEFAULT_DB = "autointerp.duckdb"


def db_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--db", default=lambda: os.environ.get("AUTOINTERP_DB", DEFAULT_DB), show_default="$AUTOINTERP_DB or ./autointerp.duckdb",
        type=click.Path(dir_okay=False), help="DuckDB database file.",
    )(f)


def format_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--format", "fmt", type=click.Choice(sorted(render.FORMATS)), default="table", show_default=True,
        help="Output format.",
    )(f)


def _verbose() -> bool:
    ctx = click.get_current_context(silent=True)
    flag = bool(ctx is not None and ctx.find_root().params.get("verbose"))
    return flag or os.environ.get("AUTOINTERP_VERBOSE", "") not in ("", "0")


def _fail(message: str, status: int) -> typing.NoReturn:
    """One line on stderr (control characters escaped, whatever the message quotes), then exit."""
    if _verbose():
        import traceback

        traceback.print_exc()
    line = " ".join(part.strip() for part in message.splitlines() if part.strip())
    click.echo(f"error: {render.printable(line)}", err=True)
    sys.exit(status)


def _validation_message(exc: ValidationError) -> str:
    """Pydantic's errors, each led by the option it is about and the value given."""
    from autointerp.config import option_flag

    parts = []
    for e in exc.errors():
        msg = e["msg"].removeprefix("Value error, ")
        if e["loc"]:
            given = e.get("input")
            value = f" {given}" if isinstance(given, int | float | str) else ""
            msg = f"{option_flag(str(e['loc'][0]))}{value}: {msg}"
        parts.append(msg)
    return "; ".join(parts)


def friendly_errors(f: Callable[..., Any]) -> Callable[..., Any]:
    """An error ends with one clear line on stderr and exit status 2 (bad input) or 1 (a lock held too
    long, an LLM failure, a bug of ours), Ctrl-C with one line and 130; the traceback only with --verbose
    or AUTOINTERP_VERBOSE=1."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except AutointerpError as exc:
            _fail(str(exc), exc.exit_code)
        except ValidationError as exc:
            _fail(_validation_message(exc), 2)
        except KeyboardInterrupt:
            _fail("interrupted (Ctrl-C); nothing more was written", 130)
        except store.DBError as exc:
            _fail(f"database error: {cause(exc)}", 1)
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except Exception as exc:
            _fail(f"internal error ({type(exc).__name__}: {exc}); run with --verbose for the traceback", 1)

    return wrapper


class _UsageLine(click.ClickException):
    """A usage error (bad option value, unknown option) as one line, exit status 2, like every other."""

    exit_code = 2

    def __init__(self, exc: click.UsageError):
        where = exc.ctx.command_path if exc.ctx is not None else "autointerp"
        super().__init__(f"{exc.format_message()} (see `{where} --help`)")

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {render.printable(' '.join(self.format_message().split()))}", err=True)


class _Group(click.Group):
    """The command group, reporting usage errors of the group and of every command in one line."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except click.UsageError as exc:
            raise _UsageLine(exc) from exc

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            raise _UsageLine(exc) from exc


@click.group(cls=_Group)
@click.version_option(__version__)
@click.option("--verbose", is_flag=True, help="Show the traceback of an error (also: AUTOINTERP_VERBOSE=1).")
def main(verbose: bool) -> None:
    """Label, score and query every feature of a language model.

    \b
    Example:
      autointerp collect --tokens 100000
      autointerp sql "SELECT feature, max_act FROM features ORDER BY max_act DESC LIMIT 5"
      autointerp show 42
    """


def parse_range(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        a, b = value.split(":")
        return int(a), int(b)
    except ValueError:
        raise click.BadParameter(f"'{value}': use START:STOP, e.g. 0:1000") from None


class RangeType(click.ParamType):
    name = "START:STOP"

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        return value if value is None or isinstance(value, tuple) else parse_range(value)


class RangesType(click.ParamType):
    """Comma-separated START:STOP ranges, e.g. 0:8192,8192:16384."""

    name = "START:STOP,..."

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if value is None or isinstance(value, list):
            return value
        ranges = [parse_range(v.strip()) for v in str(value).split(",") if v.strip()]
        for r in ranges:
            if r is not None and not 0 <= r[0] < r[1]:
                self.fail(f"'{r[0]}:{r[1]}' is empty or negative: use START:STOP with 0 <= START < STOP", param, ctx)
        return ranges


def field_option(name: str, field: FieldInfo) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A click option for one config field: flag from the field (or its json_schema_extra 'flag'),
    help from its description, default from its default, type from its annotation."""
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    flag = "--" + str(extra.get("flag") or name.replace("_", "-"))
    ann = field.annotation
    args = [a for a in typing.get_args(ann) if a is not type(None)]
    base = args[0] if typing.get_origin(ann) in (typing.Union, types.UnionType) and len(args) == 1 else ann
    kw: dict[str, Any] = {"help": field.description, "default": field.default, "show_default": True}
    if base is bool:
        return click.option(f"{flag}/--no-{flag[2:]}", name, **kw)
    if typing.get_origin(base) is typing.Literal:
        kw["type"] = click.Choice([str(c) for c in typing.get_args(base)])
    elif typing.get_origin(base) is tuple and typing.get_args(base)[-1] is Ellipsis:
        kw.update(multiple=True, default=(), show_default=False)
    elif typing.get_origin(base) is tuple:
        kw["type"] = RangeType()
    elif base in (int, float, str):
        kw["type"] = base
    if field.default is None:
        kw["show_default"] = False
    return click.option(flag, name, **kw)


def config_options(*models: type[BaseModel], exclude: tuple[str, ...] = ()) -> Callable[..., Any]:
    """Click options generated from config models: each field once (the first model that has it wins)."""

    def deco(f: Callable[..., Any]) -> Callable[..., Any]:
        seen = set(exclude)
        opts = []
        for model in models:
            for name, field in model.model_fields.items():
                if name not in seen:
                    seen.add(name)
                    opts.append(field_option(name, field))
        for opt in reversed(opts):
            f = opt(f)
        return f

    return deco


M = typing.TypeVar("M", bound=BaseModel)


def build(model: type[M], kwargs: dict[str, Any], **overrides: Any) -> M:
    """The config `model` from the command's options (each field of the model that is among them)."""
    return model(**{k: v for k, v in kwargs.items() if k in model.model_fields}, **overrides)


class Bars:
    """The one progress display: a bar per stage, fed ProgressEvents. A bar closes when its stage reports
    done == total, so its time and rate are that stage's own, not the whole command's."""

    def __init__(self) -> None:
        self.bars: dict[str, Any] = {}
        self.finished: set[str] = set()

    def __call__(self, e: ProgressEvent) -> None:
        from tqdm import tqdm

        done = e.total > 0 and e.done >= e.total
        bar = self.bars.get(e.stage)
        if bar is None:
            if done and e.stage in self.finished:
                return  # a finished stage saying so again
            bar = self.bars[e.stage] = tqdm(total=e.total, unit=e.unit, unit_scale=e.unit == "tok",
                                            dynamic_ncols=True, desc=e.stage, file=sys.stderr)
        bar.total = e.total
        bar.n = e.done
        if e.detail:
            bar.set_postfix_str(e.detail, refresh=False)
        bar.refresh()
        if done:
            bar.close()
            del self.bars[e.stage]
            self.finished.add(e.stage)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()


@contextmanager
def interruptible(message: str) -> Iterator[Bars]:
    from autointerp.collect.stage import sigterm_as_interrupt

    bars = Bars()
    try:
        with sigterm_as_interrupt():
            yield bars
    except KeyboardInterrupt:
        bars.close()
        click.echo(f"\ninterrupted: {message}", err=True)
        sys.exit(130)
    finally:
        bars.close()


def pick_dictionary(con: Any, dictionary_id: int | None) -> int:
    if dictionary_id is not None:
        store.get_dictionary(con, dictionary_id)
        return dictionary_id
    complete = [d for d in store.list_dictionaries(con) if d.status == "complete"]
    if not complete:
        raise BadInput("no complete dictionary in this database; run `autointerp collect` first")
    return complete[-1].dictionary_id

