"""The `farm` console script: the Typer app, its commands, and the one place where errors become
messages and exit codes.

Every command runs under `FarmGroup.invoke`, which maps what escapes it to one line on stderr
(control characters escaped, never read as markup) and an exit code:

| exit | meaning |
| ---- | ------- |
| 0 | success |
| 1 | a job did not succeed (failed, oom, timeout, invalid), another farm error, or an OS error (a file) |
| 2 | bad input (SpecError, ConfigError, CheckpointError): nothing was run or queued |
| 3 | Redis cannot be reached or refused the farm (BrokerError, any redis-py or kombu error); OwnershipError |
| 4 | the run, job, result or schedule asked for does not exist (NotFoundError) |
| 5 | jobs were left that no live worker can serve (`--wait`) |
| 6 | `farm check --require-verdict`: a result could not be judged (too little history, suspect, too noisy) |

Command modules hold plain functions (they never import this module); this module registers them.
"""

from __future__ import annotations

import inspect
import re
import sys
from types import ModuleType
from typing import TYPE_CHECKING, Any

import typer
from typer._click.exceptions import (  # typer's vendored click: the classes its parser raises
    BadParameter,
    ClickException,
    MissingParameter,
    NoArgsIsHelpError,
)
from typer.core import TyperGroup

from farm import __version__
from farm.cli import farm_cmds, publish, repair_cmds, report_cmds, run, schema, sweep_cmds
from farm.cli.lazy import lazy_module, when_imported
from farm.cli.output import EXIT_BAD_INPUT, EXIT_BROKER, EXIT_JOB_FAILED, EXIT_NOT_FOUND, fail, out
from farm.errors import BrokerError, CheckpointError, ConfigError, FarmError, NotFoundError, OwnershipError, SpecError

if TYPE_CHECKING:
    import redis
    from kombu.exceptions import OperationalError

    from farm.reports import publish as publishing
    from farm.results import store
else:  # run on first use (farm.cli.lazy): scipy (publish), redis and numpy (the store)
    publishing = lazy_module("farm.reports.publish")
    store = lazy_module("farm.results.store")

_EXIT_CODES: list[tuple[type[FarmError], int]] = [
    (SpecError, EXIT_BAD_INPUT),
    (ConfigError, EXIT_BAD_INPUT),
    (CheckpointError, EXIT_BAD_INPUT),
    (BrokerError, EXIT_BROKER),
    (NotFoundError, EXIT_NOT_FOUND),
    (OwnershipError, EXIT_BROKER),
    (FarmError, EXIT_JOB_FAILED),
]


def exit_code_for(exc: FarmError) -> int:
    return next(code for cls, code in _EXIT_CODES if isinstance(exc, cls))


def _os_message(e: OSError) -> str:
    text = e.strerror or str(e)
    return f"{e.filename}: {text}" if e.filename else text


def _redis_errors() -> tuple[type[redis.RedisError], ...]:
    """redis.RedisError once redis-py is imported, else nothing: an error of a library that was never
    imported cannot have been raised, and importing it to find that out costs every command."""
    module = sys.modules.get("redis")
    return (module.RedisError,) if module is not None else ()


def _kombu_errors() -> tuple[type[OperationalError], ...]:
    """kombu.exceptions.OperationalError once kombu is imported, else nothing (as `_redis_errors`)."""
    module = sys.modules.get("kombu.exceptions")
    return (module.OperationalError,) if module is not None else ()


def usage_line(e: ClickException) -> str:
    """A click usage error as one line: `farm run: --batch: why (see farm run --help)`."""
    ctx = getattr(e, "ctx", None)
    where = ctx.command_path if ctx is not None else "farm"
    name: str | None = None
    if isinstance(e, BadParameter) and not isinstance(e, MissingParameter):
        hint, param = e.param_hint, e.param
        if isinstance(hint, str):
            name = hint
        elif hint:
            name = " / ".join(hint)
        elif param is not None:
            name = param.opts[0] if param.opts else param.name
    text = f"{where}: {name}: {e.message}" if name else f"{where}: {e.format_message()}"
    text = text.rstrip().rstrip(".")
    if ctx is not None and ctx.command.get_help_option(ctx) is not None:
        text += f" (see {where} {ctx.help_option_names[0]})"
    return text


class FarmGroup(TyperGroup):
    """The root group: every command (subgroups too) runs inside its `invoke`, which maps errors.

    Click's usage errors (a bad option value, an unknown option or command, a missing argument),
    from parsing the root (`make_context`) or a command (`invoke`), are one line and their exit
    code (2) too, instead of Typer's usage box; `no_args_is_help` still prints the help.
    """

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any) -> Any:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except NoArgsIsHelpError:
            raise
        except ClickException as e:
            raise fail(usage_line(e), e.exit_code) from None

    def invoke(self, ctx: Any) -> Any:  # typer's (vendored) click Context
        try:
            return super().invoke(ctx)
        except NoArgsIsHelpError:
            raise
        except ClickException as e:
            raise fail(usage_line(e), e.exit_code) from None
        except FarmError as e:
            raise fail(str(e), exit_code_for(e)) from None
        except _redis_errors() as e:
            raise fail(str(store.broker_error(e)), EXIT_BROKER) from None
        except _kombu_errors() as e:
            raise fail(f"Redis failed under the command: {e}", EXIT_BROKER) from None
        except OSError as e:
            raise fail(_os_message(e), EXIT_JOB_FAILED) from None


app = typer.Typer(
    name="farm",
    cls=FarmGroup,
    help="Time GPT-2 models on CPUs and GPUs: build (init), forward and train, honestly.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
schedule_app = typer.Typer(help="Nightly (cron) or interval schedules of sweeps, fired by `farm beat`.")


def _version(value: bool) -> None:
    if value:
        out.print(f"farm {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Time GPT-2 models on CPUs and GPUs: build (init), forward and train, honestly."""
    repair_cmds.warn_skipped_records()  # a record no reader can parse: one warning line per key
    # With FARM_PUBLISH_DIR, every schedule firing in this process republishes: the hook is installed
    # once the schedules (farm.nightly.schedule, which fires them) are imported, before anything fires.
    when_imported("farm.nightly.schedule", _install_publish_hook)


def _install_publish_hook(_schedule: ModuleType) -> None:
    publishing.install_publish_hook()


def _paragraphs(doc: str | None) -> str:
    """A docstring as help: the lines of each paragraph joined, so Rich folds them at the terminal's
    width (a docstring's own line breaks, kept, broke `farm --help` mid-sentence in 80 columns)."""
    paras = [" ".join(p.split()) for p in inspect.cleandoc(doc or "").split("\n\n")]
    return "\n\n".join(p for p in paras if p)


def _first_sentence(doc: str | None) -> str:
    """The command list's line: the help's first sentence (the rest is in `farm COMMAND --help`)."""
    text = _paragraphs(doc).split("\n\n")[0]
    cut = re.search(r"(?<!\.)\.(?=\s+[A-Z`(]|$)", text)  # a full stop, not the dots of `RUN...`
    return text[: cut.end()] if cut else text


def _command(group: typer.Typer, fn: Any, name: str | None = None) -> None:
    group.command(name, help=_paragraphs(fn.__doc__), short_help=_first_sentence(fn.__doc__))(fn)


for _fn in (
    run.run,
    farm_cmds.submit,
    farm_cmds.status,
    farm_cmds.workers,
    farm_cmds.results,
    farm_cmds.cancel,
    farm_cmds.worker,
    farm_cmds.up,
    farm_cmds.down,
    report_cmds.report,
    report_cmds.compare,
    report_cmds.diff,
    sweep_cmds.sweep,
    sweep_cmds.beat,
    sweep_cmds.regressions,
    sweep_cmds.check,
    schema.schema,
    publish.publish,
    repair_cmds.delete,
):
    _command(app, _fn)
_command(app, report_cmds.import_, "import")
_command(schedule_app, sweep_cmds.schedule_add, "add")
_command(schedule_app, sweep_cmds.schedule_list, "list")
_command(schedule_app, sweep_cmds.schedule_remove, "remove")
_command(schedule_app, sweep_cmds.schedule_run, "run")
app.add_typer(schedule_app, name="schedule")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
