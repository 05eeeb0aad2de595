"""Package layout that pyproject.toml cannot express: the repository keeps `templates/`, `migrations/`
and `client/` at the top (DESIGN.md), and the wheel carries them as package data of `server`
(`server/templates`, `server/migrations`) and as the `obow_lab_client` package, so an installed lab
runs without the source tree (`server.core.resources.lab_dir`)."""

from setuptools import find_packages, setup

setup(
    packages=[
        *find_packages(include=["obow", "obow.*", "server", "server.*", "worker", "worker.*"]),
        "server.templates",
        "server.migrations",
        "server.migrations.versions",
        "obow_lab_client",
    ],
    package_dir={
        "server.templates": "templates",
        "server.migrations": "migrations",
        "obow_lab_client": "client/obow_lab_client",
    },
)
