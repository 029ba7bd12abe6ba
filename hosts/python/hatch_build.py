"""Puts the rekey component into the sdist and the wheel.

The repository keeps one copy of the component, host/component/rekey_guest.wasm;
the package carries it as rekey/_component/rekey_guest.wasm. An sdist built
from a checkout holds it as src/rekey/_component/rekey_guest.wasm, so a wheel
built from the sdist alone takes it from there. Nothing is written to the
source tree: hatchling adds the file to the archive it writes."""

from __future__ import annotations

import os
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

PACKAGED = "src/rekey/_component/rekey_guest.wasm"
CHECKOUT = "../../host/component/rekey_guest.wasm"


class ComponentHook(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name not in ("sdist", "wheel"):
            return
        if os.path.isfile(os.path.join(self.root, PACKAGED)):
            # An unpacked sdist: the file is part of the package's sources.
            return
        source = os.path.normpath(os.path.join(self.root, CHECKOUT))
        if not os.path.isfile(source):
            raise FileNotFoundError(
                f"the rekey component is neither at {PACKAGED} (an sdist) nor at {source} (a checkout)"
            )
        target = PACKAGED if self.target_name == "sdist" else PACKAGED.removeprefix("src/")
        build_data["force_include"][source] = target
