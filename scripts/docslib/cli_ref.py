"""The command-line reference page, generated from the ``dltrain`` command's argparse parsers.

Every command and sub-command is a section with its usage, description and a table of its arguments (flags,
default, help), read from the parser objects themselves, so a flag added to ``dltrain.cli`` is on the page at the
next build. ``dltrain fit|validate|test|predict`` are the config CLI (``dltrain.CLI``, jsonargparse): their help
is generated from the Trainer's signature at run time and is shown as the command prints it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import sys

# argparse has no public way to list a parser's arguments or sub-parsers: the parser's `_actions` and the
# sub-parsers action's `choices` are what `format_help` itself walks. Used here only, to write documentation.


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser, str]]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for name, sub in action.choices.items():
                found.append((name, sub, helps.get(name, "")))
    return found


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _argument_rows(parser: argparse.ArgumentParser) -> list[str]:
    rows = []
    for action in parser._actions:
        if isinstance(action, (argparse._SubParsersAction, argparse._HelpAction)):
            continue
        if action.option_strings:
            name = ", ".join(f"`{s}`" for s in action.option_strings)
            if action.nargs != 0:
                name += f" `{action.metavar or action.dest.upper()}`"
        else:
            name = f"`{action.metavar or action.dest}`" + (" ..." if action.nargs in ("+", "*") else "")
        default = "" if action.default in (None, False, argparse.SUPPRESS) or not action.option_strings else (
            f"`{action.default}`")
        rows.append(f"| {name} | {_cell(default)} | {_cell(action.help or '')} |")
    return rows


def _usage(parser: argparse.ArgumentParser) -> str:
    return re.sub(r"\s+", " ", parser.format_usage().replace("usage:", "", 1)).strip()


def _section(path: list[str], parser: argparse.ArgumentParser, help_text: str, level: int) -> list[str]:
    lines = [f"{'#' * level} `{' '.join(path)}`", ""]
    if help_text:
        lines += [help_text[0].upper() + help_text[1:] + ("" if help_text.endswith(".") else "."), ""]
    if parser.description and parser.description != help_text:
        lines += [parser.description, ""]
    lines += ["```text", _usage(parser), "```", ""]
    rows = _argument_rows(parser)
    if rows:
        lines += ["| argument | default | what |", "| --- | --- | --- |", *rows, ""]
    for name, sub, sub_help in _subcommands(parser):
        lines += _section([*path, name], sub, sub_help, min(level + 1, 4))
    return lines


def _config_cli_help() -> str:
    """``dltrain fit --help`` as the command prints it (jsonargparse), or why it could not be generated."""
    from dltrain import cli

    out = io.StringIO()
    argv0, columns = sys.argv[0], os.environ.get("COLUMNS")
    sys.argv[0], os.environ["COLUMNS"] = "dltrain", "100"  # the program name and width the help is printed with
    try:
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            cli.main(["fit", "--help"])
    finally:
        sys.argv[0] = argv0
        if columns is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = columns
    return out.getvalue().rstrip()


def cli_markdown() -> str:
    """The whole page."""
    from dltrain import cli

    parser = cli._parser()
    lines = ["# Command line", "",
             "Generated from the parsers of the `dltrain` command (`dltrain.cli`) when the site is built. "
             "`dltrain --help` and `dltrain COMMAND --help` print the same.", ""]
    lines += _section(["dltrain"], parser, "", 2)
    lines += ["## `dltrain fit`, `validate`, `test`, `predict`", "",
              "The config command line (`dltrain.CLI`, like `lightning fit`; needs `pip install dltrain[cli]`): the "
              "task and data by class path (`--model`, `--data`) or in a `--config` YAML file, every `Trainer` "
              "argument as `--trainer.NAME`. The help below is what `dltrain fit --help` prints without a task "
              "chosen; with `--model` it lists the task's arguments too.", "",
              '??? note "dltrain fit --help"', "", "    ```text"]
    lines += ["    " + line if line else "" for line in _config_cli_help().splitlines()]
    lines += ["    ```", ""]
    return "\n".join(lines)
