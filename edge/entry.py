"""The ``edge-agent`` console script: a clear message when the device extra is missing.

``pip install neuroedge`` alone installs no dependencies (the device and the workstation
choose theirs through extras), so the agent's own imports would fail with a traceback.
This entry point imports the agent inside a guard and says what to install instead.
"""

from __future__ import annotations

import sys

from .errors import EX_INTERRUPTED, EX_UNAVAILABLE  # standard library only, like this module

INSTALL_HINT = (
    "install the device extra: pip install 'neuroedge[edge]' (and 'neuroedge[dicom-codecs]' "
    "for compressed DICOM); on a Jetson Nano see docs/deployment/jetson-nano.md"
)


def main() -> None:
    try:
        from .cli import main as agent_main
    except KeyboardInterrupt:  # Ctrl-C while the agent's modules were still loading
        sys.stderr.write("edge-agent: interrupted\n")
        sys.exit(EX_INTERRUPTED)
    except ImportError as exc:
        missing = getattr(exc, "name", None) or str(exc)
        sys.stderr.write(f"error: edge-agent needs the Python package '{missing}', which is "
                         f"not installed; {INSTALL_HINT}\n")
        sys.exit(EX_UNAVAILABLE)
    agent_main()
