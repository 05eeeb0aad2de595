"""The `obow` command line.

Each module in this package contributes its commands through a module-level `COMMANDS` list, so a
new run kind adds a file here and touches nothing else. Other installed packages (the lab server)
add command groups through the `obow.cli_plugins` entry-point group, which keeps the library free
of any import of the server.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from importlib.metadata import entry_points

import click

from obow.errors import ObowError


class _Main(click.Group):
    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except ObowError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(2)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="obow-lab")
def main() -> None:
    """OBoW: online bag-of-visual-words self-supervised learning, evaluation and export."""


def _register() -> None:
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for command in getattr(module, "COMMANDS", []):
            main.add_command(command)
    for plugin in entry_points(group="obow.cli_plugins"):
        try:
            main.add_command(plugin.load())
        except ImportError as err:  # the lab's extra dependencies may be missing
            print(f"warning: CLI plugin '{plugin.name}' unavailable: {err}", file=sys.stderr)


_register()
