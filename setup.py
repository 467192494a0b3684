"""Generates the gRPC stubs from protos/ during the build (regular and editable installs)."""

import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildWithStubs(build_py):
    def run(self):
        sys.path.insert(0, str(Path(__file__).parent))
        from vlm_service.protogen import generate

        generate()
        super().run()


setup(cmdclass={"build_py": BuildWithStubs})
