"""Every package under src/ is found, plus the recipes that pyproject.toml maps from bundles/.

pyproject.toml holds everything else; setuptools cannot both find packages and add a mapped
one there, so this one argument lives here.
"""

from setuptools import find_packages, setup

setup(packages=[*find_packages("src"), "moondream_cli.recipes"])
