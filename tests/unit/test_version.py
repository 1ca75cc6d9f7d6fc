"""The version is written once, in exporter/__init__.py; everything else follows it."""

import importlib.metadata
import re

from exporter import __version__
from tests.helpers import ROOT


def test_installed_package_version_is_the_code_version():
    assert importlib.metadata.version("netstack-exporter") == __version__


def test_chart_app_version_is_the_code_version():
    chart = (ROOT / "charts" / "netstack-exporter" / "Chart.yaml").read_text()
    app_version = re.search(r'^appVersion:\s*"?([^"\s]+)"?\s*$', chart, re.M)
    assert app_version and app_version.group(1) == __version__


def test_changelog_names_the_current_version():
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert re.search(rf"^## \[?{re.escape(__version__)}\]?", changelog, re.M)
