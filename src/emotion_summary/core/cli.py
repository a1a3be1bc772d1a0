"""Command lines generated from the one definition of each option.

An option is defined once, with its type, default and help, either as a parameter of the command's
function (type annotation, default, and a line under `Args:` in its docstring) or as a field of a
dataclass (`field(default=..., metadata={"help": ...})`, as TRL's configs). From that this module
builds `--help`, parses `--name value`, `--name=value`, bare `--flag`, positional values for the
required options, and `--config FILE` (YAML or JSON) where a command accepts one. Every value is
checked against its type at the boundary; all problems (unknown options, mistyped values, missing
required ones) are printed at once, one line each naming the option, and the command exits 2.
A UserError raised by the command itself is printed as one line too (exit 2).

Options several commands share are an option group: a frozen dataclass whose fields declare type,
default, help and range once (`EndpointOptions`: every command that talks to an OpenAI-compatible
server). A command takes the group as one parameter decorated with `option_group`; its fields become
that command's options, checked together when the group is built.

Exit codes, the same in every command:
    0    done
    1    ran, but the result is not usable: a submission that fails the check (`check`, `predict`),
         or no usable reply from a teacher or judge
    2    a problem the user can fix: a bad option or input file, an endpoint that cannot be used
    130  interrupted (Ctrl-C or SIGTERM); finished work is kept and the same command resumes
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import json
import math
import re
import signal
import sys
import textwrap
import threading
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from emotion_summary.core.errors import ConfigError, NotReady, UserError
from emotion_summary.core.json_input import load_json
from emotion_summary.core.paths import missing_file, set_command_line_inputs

class _Required:
    """The default of an option that has none. Not inspect.Parameter.empty: Python 3.11.0-3.11.3's
    dataclass reads the class signature for its docstring and takes that value for "no default" (so
    `Option` would fail to define: non-default argument follows default argument)."""

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()
EXIT_OK, EXIT_NOT_READY, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
CONFIG_NOTES = ("card",)  # keys of a --config file that describe it (a preset's card) and are not options
_TRUE = {"true", "yes", "y", "1", "on"}
_FALSE = {"false", "no", "n", "0", "off"}
_NONE = {"none", "null"}


@dataclass
class Option:
    name: str
    type: Any = str
    default: Any = REQUIRED
    help: str = ""
    variadic: bool = False  # *args: takes the positional values left over
    parse: Callable[[str], Any] | None = None  # a custom parser for a string from the command line

    @property
    def required(self) -> bool:
        return self.default is REQUIRED and not self.variadic

    @property
    def flag(self) -> str:
        return f"--{self.name}"


def _docstring_help(fn: Callable) -> tuple[str, dict[str, str]]:
    """(summary, {parameter: help}) from a Google-style docstring; continuation lines are joined."""
    doc = inspect.getdoc(fn) or ""
    summary, _, rest = doc.partition("\nArgs:\n")
    helps, current = {}, None
    for line in rest.splitlines():
        m = re.match(r"^    (\*{0,2}\w+):\s*(.*)$", line)
        if m:
            current = m.group(1).lstrip("*")
            helps[current] = m.group(2)
        elif current and line.startswith("        "):
            helps[current] += " " + line.strip()
        elif line.strip():
            current = None
    return summary.strip(), helps


def function_options(fn: Callable) -> list[Option]:
    """The options of `fn`: its parameters, with their types, defaults and docstring help.
    Parameters whose names start with `_` and `**kwargs` are not options."""
    hints = typing.get_type_hints(fn)
    _, helps = _docstring_help(fn)
    groups = getattr(fn, "__option_groups__", {})
    out = []
    for p in inspect.signature(fn).parameters.values():
        if p.name.startswith("_") or p.kind is p.VAR_KEYWORD:
            continue
        if p.name in groups:  # its fields, in their declared order
            cls, without = groups[p.name]
            out += dataclass_options(cls, exclude=without)
            continue
        variadic = p.kind is p.VAR_POSITIONAL
        default = REQUIRED if p.default is inspect.Parameter.empty else p.default
        out.append(Option(p.name, hints.get(p.name, str), default, helps.get(p.name, ""), variadic=variadic))
    return out


def dataclass_options(cls, exclude: tuple[str, ...] = ()) -> list[Option]:
    """The options of a dataclass: each field's type, default and metadata["help"] (and ["parse"])."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if f.name in exclude or f.name.startswith("_"):
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else REQUIRED)
        help = f.metadata.get("help", "") + (f" [{range_text(*f.metadata['range'])}]" if "range" in f.metadata else "")
        out.append(Option(f.name, hints[f.name], default, help, parse=f.metadata.get("parse")))
    return out


def range_text(kind: type, minimum: float, maximum: float | None, strict: bool, zero_is_off: bool) -> str:
    """A declared range as help shows it: `1..256`, `>0..86400`, `0 (off) or 0.01..1000000`."""
    def show(x: float) -> str:
        return f"{x:,.0f}" if float(x).is_integer() else f"{x:g}"

    low = f">{show(minimum)}" if strict else show(minimum)
    text = f"{low}..{show(maximum)}" if maximum is not None else f">={low}" if not strict else low
    return f"0 (off) or {text}" if zero_is_off else text


# ---- types ------------------------------------------------------------------------------------

def _args(tp) -> tuple:
    return typing.get_args(tp)


def _is_union(tp) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def type_name(tp) -> str:
    if _is_union(tp):
        return " | ".join(type_name(a) for a in _args(tp) if a is not type(None))
    if typing.get_origin(tp) is Literal:
        return "{" + ",".join(map(str, _args(tp))) + "}"
    if typing.get_origin(tp) in (list, tuple):
        return f"{type_name(_args(tp)[0])},..."
    return {type(None): "none", int: "int", float: "float", bool: "bool", str: "text", Path: "path"}.get(
        tp, getattr(tp, "__name__", str(tp)))


def parse_value(raw: str, tp) -> Any:
    """A string from the command line as a value of type `tp`; ValueError says what was expected."""
    if _is_union(tp):
        members = [a for a in _args(tp) if a is not type(None)]
        if type(None) in _args(tp) and raw.strip().lower() in _NONE and str not in members:
            return None
        errors = []
        for member in sorted(members, key=lambda m: m is str):  # the most specific type first
            try:
                return parse_value(raw, member)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(errors[0])
    if raw.strip() == "":
        raise ValueError("expected a value, got an empty string")
    origin = typing.get_origin(tp)
    if origin is Literal:
        if raw in {str(c) for c in _args(tp)}:
            return next(c for c in _args(tp) if str(c) == raw)
        raise ValueError(f"expected one of {', '.join(map(str, _args(tp)))}, got {raw!r}")
    if origin in (list, tuple):
        items = [p.strip() for p in raw.strip().strip("[]").split(",")]
        if any(not p for p in items):
            raise ValueError(f"expected a comma-separated list without empty items, got {raw!r}")
        return [parse_value(p.strip("'\""), _args(tp)[0]) for p in items]
    if tp is bool:
        low = raw.strip().lower()
        if low in _TRUE | _FALSE:
            return low in _TRUE
        raise ValueError(f"expected true or false, got {raw!r}")
    if tp is int:
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"expected an integer, got {raw!r}") from None
    if tp is float:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"expected a number, got {raw!r}") from None
        if not math.isfinite(value):
            raise ValueError(f"expected a finite number, got {raw!r}")
        return value
    return tp(raw) if tp is Path else raw


def check_value(value: Any, tp) -> Any:
    """A value from a --config file (already typed by JSON/YAML) checked against `tp`."""
    if isinstance(value, str):
        return parse_value(value, tp)
    if _is_union(tp):
        if value is None and type(None) in _args(tp):
            return None
        for member in _args(tp):
            try:
                return check_value(value, member)
            except ValueError:
                continue
        raise ValueError(f"expected {type_name(tp)}, got {value!r}")
    origin = typing.get_origin(tp)
    if origin in (list, tuple) and isinstance(value, (list, tuple)):
        return [check_value(v, _args(tp)[0]) for v in value]
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    if tp in (int, bool) and type(value) is tp:
        return value
    if origin is Literal and value in _args(tp):
        return value
    raise ValueError(f"expected {type_name(tp)}, got {value!r}")


def comma_list(value: Any, name: str, item: type = str) -> list:
    """`a,b` (a string from a command line or a Python call) or a list, as a list of `item`; a bad
    value is a ConfigError naming --name."""
    try:
        return check_value(value, list[item])
    except ValueError as e:
        raise ConfigError(f"--{name}: {e}") from None


def number_problem(name: str, value: Any, kind: type, minimum: float, strict: bool = False,
                   maximum: float | None = None) -> str | None:
    """None when `value` is a `kind` (int or float) at least (or, `strict`, above) `minimum` and at most
    `maximum`; else the one-line problem naming --name. The one range check of every command's numbers."""
    try:
        number = None if isinstance(value, bool) else float(value)
    except (TypeError, ValueError, OverflowError):
        number = None
    too_big = maximum is not None and number is not None and number > maximum
    if number is None or not math.isfinite(number) or number < minimum or (strict and number == minimum) \
            or too_big or (kind is int and not number.is_integer()):
        bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
        bound += f" and <= {maximum:g}" if maximum is not None else ""
        return f"--{name}: expected {'an integer' if kind is int else 'a number'} {bound}, got {value!r}"
    return None


def check_numbers(checks: dict[str, tuple], separator: str = "\n") -> None:
    """Every range problem at once: {name: (value, kind, minimum[, strict])}; None values are not given."""
    problems = [number_problem(name, *spec) for name, spec in checks.items() if spec[0] is not None]
    if any(problems):
        raise ConfigError(separator.join(p for p in problems if p))


# ---- option groups ------------------------------------------------------------------------------

def ranged(default, help: str, kind: type, minimum: float, maximum: float | None = None, strict: bool = False,
           zero_is_off: bool = False, **metadata):
    """A group field with its range beside it: `kind` in [minimum, maximum] (`strict`: above minimum);
    `zero_is_off`: 0 is accepted too, meaning the feature is off."""
    return field(default=default, metadata={"help": help, "range": (kind, minimum, maximum, strict, zero_is_off),
                                            **metadata})


def group_problems(group) -> list[str]:
    """Every range problem of an option group's values, one line each naming the option."""
    problems = []
    for f in dataclasses.fields(group):
        value = getattr(group, f.name)
        if "range" not in f.metadata or value is None:
            continue
        kind, minimum, maximum, strict, zero_is_off = f.metadata["range"]
        if zero_is_off and value == 0 and not isinstance(value, bool):
            continue
        if problem := number_problem(f.name, value, kind, minimum, strict, maximum):
            problems.append(problem + (" (or 0 for off)" if zero_is_off else ""))
    return problems


def option_group(param: str, without: tuple[str, ...] = ()):
    """Decorate a command whose parameter `param` is an option group (a dataclass): its fields, except
    `without`, are the command's options, and a caller may pass them flat (`endpoint=...`) or as the
    group itself (`param=Group(...)`), not both."""
    def decorate(fn):
        cls = typing.get_type_hints(fn)[param]
        names = {f.name for f in dataclasses.fields(cls)} - set(without)

        @functools.wraps(fn)
        def command(*args, **kwargs):
            flat = {name: kwargs.pop(name) for name in list(kwargs) if name in names}
            if flat and kwargs.get(param) is not None:
                raise TypeError(f"{fn.__name__}: pass {param}= or its fields, not both")
            if flat:
                kwargs[param] = cls(**flat)
            return fn(*args, **kwargs)

        command.__option_groups__ = {**getattr(fn, "__option_groups__", {}), param: (cls, tuple(without))}
        return command

    return decorate


@dataclass(frozen=True)
class EndpointOptions:
    """An OpenAI-compatible server (vLLM, LMDeploy, a hosted API): the options of every command that
    asks one (predict --backend openai, label, synthesize, evaluate --judge)."""

    endpoint: str = field(default="", metadata={
        "help": "base URL of the OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1 (vLLM) or a hosted API"})
    model: str = field(default="", metadata={"help": "model name the server serves"})
    api_key_env: str = field(default="OPENAI_API_KEY", metadata={
        "help": "environment variable holding the API key (sent as a Bearer token when set; never written)"})
    concurrency: int = ranged(4, "requests in flight at once", int, 1, 256)
    timeout_s: float = ranged(300.0, "seconds for one whole request, connect to last byte", float, 0, 86_400,
                              strict=True)
    max_retries: int = ranged(4, "HTTP retries per request on connection errors, timeouts, garbled replies, "
                              "429 and 5xx (back-off doubles from 1 s, at most 60 s a wait; Retry-After is "
                              "honoured)", int, 0, 100)
    requests_per_minute: float = ranged(0.0, "client-side rate limit; 0 for none", float, 0.01, 1_000_000,
                                        zero_is_off=True)
    max_tokens: int | None = ranged(None, "reply length limit per request (default: the command's own: labelling "
                                    "1024, synthesis 6000, judge 200)", int, 1, 1_000_000)
    max_reply_mb: float = ranged(4.0, "refuse a reply body larger than this many MB (stops reading there)",
                                 float, 0, 1024, strict=True)

    def __post_init__(self):
        problems = group_problems(self)
        if str(self.endpoint).strip():
            from emotion_summary.teacher.client import endpoint_problem

            if problem := endpoint_problem(str(self.endpoint)):
                problems.insert(0, problem)
        if problems:
            raise ConfigError("\n".join(problems))

    def require(self, why: str) -> "EndpointOptions":
        """Itself, or a ConfigError when --endpoint or --model is missing (`why`: the command needing them)."""
        if not (str(self.endpoint).strip() and str(self.model).strip()):
            raise ConfigError(f"{why} needs --endpoint URL and --model NAME (the served model)")
        return self


# ---- parsing ----------------------------------------------------------------------------------

class Usage(Exception):
    """Command-line problems, one per line (printed as they are, exit 2)."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


def _convert(option: Option, raw: Any, problems: list[str], values: dict) -> None:
    try:
        if isinstance(raw, str) and option.parse is not None:
            value = option.parse(raw)
        elif isinstance(raw, str):
            value = parse_value(raw, option.type)
        else:
            value = check_value(raw, option.type)
    except (ValueError, UserError) as e:
        problems.append(f"{option.flag}: {e}")
        return
    if option.variadic:
        values.setdefault(option.name, []).append(value)
    else:
        values[option.name] = value


def read_config_file(path: str) -> dict:
    """`--config FILE`: a YAML or JSON mapping of option names to values."""
    p = Path(path)
    if missing_file(p):
        raise ValueError(f"{path}: {missing_file(p)}")
    try:
        text = p.read_bytes().decode("utf-8-sig")
    except OSError as e:  # no permission, a device that cannot be read (/proc/self/mem)
        raise ValueError(f"{path}: cannot be read ({e.strerror or type(e).__name__})") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not valid UTF-8 (byte {e.start})") from None
    try:
        if p.suffix.lower() == ".json":
            data = load_json(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    except Exception as e:  # noqa: BLE001 - any parser error is the file's problem
        raise ValueError(f"{path}: not valid {'JSON' if p.suffix.lower() == '.json' else 'YAML'} "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of option names to values")
    return data


def _is_bool(option: Option) -> bool:
    return option.type is bool or (_is_union(option.type) and bool in _args(option.type))


def parse_command_line(options: list[Option], argv: list[str], config_file: bool = False) -> dict:
    """The values given on the command line (and in --config FILE), typed; defaults are not filled in.
    Raises Usage listing every problem; `-h/--help` raises SystemExit(0) after the help is printed."""
    by_name = {o.name: o for o in options}
    positional = [o for o in options if o.required] + [o for o in options if o.variadic]
    problems, values, given, loose = [], {}, set(), []
    config_values: dict = {}
    config_path, config_failed = None, False
    i = 0
    while i < len(argv):
        token = argv[i]
        i += 1
        if token == "--":
            loose += argv[i:]
            break
        if not token.startswith("--") or token == "--":
            loose.append(token)
            continue
        name, eq, raw = token[2:].partition("=")
        name = name.replace("-", "_")
        if name == "config" and config_file:
            if not eq:
                if i >= len(argv):
                    problems.append("--config: expected a file name")
                    continue
                raw, i = argv[i], i + 1
            if config_path is not None or config_failed:
                problems.append("--config: given more than once (one file; the command line adds to it)")
                continue
            try:
                config_values = read_config_file(raw)
                config_path = raw
            except ValueError as e:
                problems.append(f"--config: {e}")
                config_failed = True
            continue
        option = by_name.get(name)
        if option is None and name.startswith("no") and name[2:] in by_name and _is_bool(by_name[name[2:]]):
            option, eq, raw = by_name[name[2:]], "=", "false"  # --noflag
        if option is None or option.variadic:
            problems.append(f"--{name}: unknown option")
            if not eq and i < len(argv) and not argv[i].startswith("--"):
                i += 1  # its value is not a positional argument
            continue
        if option.name in given:
            problems.append(f"{option.flag}: given more than once")
            if not eq and not _is_bool(option) and i < len(argv):
                i += 1
            continue
        given.add(option.name)
        if not eq:
            if _is_bool(option) and (i >= len(argv) or argv[i].lower() not in _TRUE | _FALSE):
                raw = "true"
            elif i >= len(argv):
                problems.append(f"{option.flag}: expected a value")
                continue
            else:
                raw, i = argv[i], i + 1
        _convert(option, raw, problems, values)
    for option in positional:
        if option.variadic:
            for raw in loose:
                _convert(option, raw, problems, values)
            loose = []
        elif option.name not in given and loose:
            given.add(option.name)
            _convert(option, loose.pop(0), problems, values)
    problems += [f"unexpected argument {raw!r}" for raw in loose]
    for key, raw in config_values.items():
        if key in CONFIG_NOTES:
            continue
        option = by_name.get(str(key).replace("-", "_"))
        if option is None or option.variadic:
            problems.append(f"--config: unknown option {key!r}")
        elif option.name not in given:  # the command line wins over the file
            given.add(option.name)
            _convert(option, raw, problems, values)
    if not config_failed:  # else the file that could not be read is the one problem to fix
        problems += [f"{o.flag}: required" for o in options if o.required and o.name not in given]
    if problems:
        raise Usage(problems)
    set_command_line_inputs({"--config": config_path})
    return values


def help_text(prog: str, summary: str, options: list[Option], config_file: bool = False,
              defaults_note: str = "") -> str:
    required = [o for o in options if o.required]
    usage = " ".join([prog, *(o.name.upper() for o in required),
                      *(f"[{o.name.upper()} ...]" for o in options if o.variadic), "[--option VALUE ...]"])
    lines = [f"usage: {usage}", "", summary, "", "options:"]
    rows = [("-h, --help", "show this help and exit")]
    if config_file:
        rows.append(("--config FILE", "YAML or JSON file of option: value pairs (the command line wins)"))
    for o in options:
        if o.variadic:
            rows.append((f"{o.name.upper()} ...", o.help))
            continue
        if o.required:
            note = "required; may be given without --" + o.name
        elif o.default in (None, "", []):
            note = ""
        else:
            note = f"default: {o.default}"
        text = o.help + (f" ({note})" if note else "")
        rows.append((f"{o.flag} {type_name(o.type)}", text))
    width = min(max(len(r[0]) for r in rows) + 2, 34)
    for left, text in rows:
        body = textwrap.wrap(text, 100 - width) or [""]
        first = left.ljust(width) + body[0] if len(left) < width else left + "\n" + " " * (width + 2) + body[0]
        lines.append("  " + first)
        lines += [" " * (width + 2) + more for more in body[1:]]
    if defaults_note:
        lines += ["", *textwrap.wrap(defaults_note, 100)]
    return "\n".join(lines) + "\n"


_COMMAND_NAME: list[str] = []  # set while `es NAME` runs a subcommand


@contextlib.contextmanager
def command_name(name: str):
    """Within this block, help and usage lines name the command `name` (e.g. "es predict")."""
    _COMMAND_NAME.append(name)
    try:
        yield
    finally:
        _COMMAND_NAME.pop()


def _prog() -> str:
    if _COMMAND_NAME:
        return _COMMAND_NAME[-1]
    main = sys.argv[0] if sys.argv and sys.argv[0] else "command"
    return Path(main).name  # scripts/stats.py -> stats.py; /venv/bin/es-stats -> es-stats


def fail(message: str) -> typing.NoReturn:
    """Print a user-fixable problem as it is (one line per problem) and exit 2."""
    from emotion_summary.core.text_escape import terminal_text

    for line in str(message).splitlines() or [""]:  # a file's text in a message never acts on the terminal
        line = terminal_text(line)
        print(line if line.startswith(("error:", "  ")) else f"error: {line}", file=sys.stderr)
    sys.exit(2)


def parse_or_exit(options: list[Option], argv: list[str] | None, summary: str, config_file: bool = False,
                  defaults_note: str = "") -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(help_text(_prog(), summary, options, config_file, defaults_note), end="")
        sys.exit(0)
    try:
        return parse_command_line(options, argv, config_file)
    except Usage as e:
        fail("\n".join(e.problems))


def run(fn: Callable, argv: list[str] | None = None, config_file: bool = False):
    """Run `fn` as a command: options from its signature and docstring, typed at the boundary.
    A UserError or an OSError (a missing file, a full or read-only disk) exits 2 with one line; Ctrl-C exits
    130 without a traceback."""
    summary, _ = _docstring_help(fn)
    values = parse_or_exit(function_options(fn), argv, summary, config_file)
    variadic = [o.name for o in function_options(fn) if o.variadic]
    star = values.pop(variadic[0], []) if variadic else []
    return call(lambda: fn(*[values.pop(o.name) for o in function_options(fn)
                              if o.required and o.name in values], *star, **values))


def call(thunk: Callable[[], Any]):
    """Run a command's work with the one mapping of outcomes to exit codes (see the module's docstring).
    SIGTERM (docker stop, timeout) is handled as Ctrl-C, so in-flight paid work is kept the same way."""
    previous = _terminate_as_interrupt()
    try:
        return thunk()
    except NotReady as e:
        for line in str(e).splitlines():
            print(f"error: {line}", file=sys.stderr)
        sys.exit(EXIT_NOT_READY)
    except UserError as e:
        fail(str(e))
    except OSError as e:  # a file that vanished, a full or read-only disk: one line, not a traceback
        fail(f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e))
    except KeyboardInterrupt as e:  # the command may say what was kept and how to resume
        print(f"\n{e}" if str(e) else "\ninterrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _terminate_as_interrupt():
    """SIGTERM raises KeyboardInterrupt in the main thread; returns the handler it replaced (None when
    not in the main thread, where handlers cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum, frame):
        raise KeyboardInterrupt("terminated (SIGTERM)")

    return signal.signal(signal.SIGTERM, interrupt)


__all__ = ["EndpointOptions", "command_name", "Option", "REQUIRED", "group_problems", "option_group", "ranged", "Usage", "call", "check_numbers", "check_value", "comma_list", "dataclass_options", "fail",
           "function_options", "help_text", "number_problem", "parse_command_line", "parse_or_exit", "parse_value", "run"]
