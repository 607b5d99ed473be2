"""The command line's view of the config: one `--flag` per RunConfig field, and TRL's own flags parsed by TRL's
`TrlParser` over `trl grpo`'s dataclasses; `overrides` turns both into the flat mapping `RunConfig.from_sources`
takes."""

from __future__ import annotations

import argparse
import dataclasses
import typing

from .config import RENAMED, RunConfig, names_list


def parse_bool(text: str) -> bool:
    """`--flag true|false` (also yes/no, 1/0)."""
    value = text.strip().lower()
    if value in ("true", "yes", "1"):
        return True
    if value in ("false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{text}'")


def add_config_flags(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """One `--flag` per RunConfig field (also spelled `--flag_name`, as TRL's flags are); defaults are None so YAML
    values are only overridden when given. TRL's own flags are parsed by TRL's dataclasses (`trl_flags`)."""
    helps = RunConfig.fields_help()
    hints = typing.get_type_hints(RunConfig)
    for f in dataclasses.fields(RunConfig):
        if f.name in skip or f.name == "trl":
            continue
        flag = RunConfig.flag(f.name)
        flags = [flag, f"--{f.name}"] if "_" in f.name else [flag]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        kind = {bool: parse_bool, int: int, float: float}.get(type(default), str)
        if default is None and float in typing.get_args(hints[f.name]):  # `float | None`: a number when given
            kind = float
        text = helps[f.name] if "(default:" in helps[f.name] else f"{helps[f.name]} (default: {default})"
        text = text.replace("%", "%%")  # argparse %-formats help strings
        kwargs = dict(dest=f.name, default=None, help=text)
        if names_list(default):
            parser.add_argument(*flags, nargs="+", metavar="NAME", **kwargs)  # lists of names: any count
        elif isinstance(default, list):
            parser.add_argument(*flags, nargs=len(default), type=float, metavar="X", **kwargs)
        else:
            parser.add_argument(*flags, type=kind, **kwargs)


def trl_flags(strings: list[str], command: str = "run") -> tuple[dict, list[str]]:
    """TRL's flags (`--learning_rate 1e-5`, `--use_peft`, `--report_to tensorboard`), parsed by TRL's own parser
    over `trl grpo`'s dataclasses: the ones given, by field name, and the strings no dataclass knows."""
    from trl import GRPOConfig, ModelConfig, TrlParser
    from trl.scripts.grpo import GRPOScriptArguments
    parser = TrlParser((GRPOScriptArguments, GRPOConfig, ModelConfig), add_help=False, prog=f"gradalign {command}",
                       usage=argparse.SUPPRESS)
    for action in parser._actions:
        action.default = argparse.SUPPRESS  # only the flags given: the rest keep the config's or gradalign's value
        action.required = False
    namespace, rest = parser.parse_known_args(strings)
    return vars(namespace), rest


def overrides(args: argparse.Namespace) -> dict:
    names = {f.name for f in dataclasses.fields(RunConfig)} - {"trl"}
    return {**getattr(args, "trl_flags", {}),
            **{k: v for k, v in vars(args).items() if k in names and v is not None}}


def renamed_flag(strings: list[str]) -> str | None:
    """The error for the first flag of a field renamed to TRL's name (`--model`, `--max-new-tokens`, ...), if any."""
    old = {spelling: name for name in RENAMED for spelling in (RunConfig.flag(name), f"--{name}")}
    given = next((s.split("=")[0] for s in strings if s.split("=")[0] in old), None)
    return f"{given} is now TRL's --{RENAMED[old[given]]}" if given else None
