"""The plugin's on/off switch (``RAY_RDT_PLUGIN``): a leaf module."""

import os


def enabled() -> bool:
    """Whether this process routes RDT through the plugin (``RAY_RDT_PLUGIN``, default on)."""
    return os.environ.get("RAY_RDT_PLUGIN", "1").strip().lower() not in ("0", "false", "no", "off", "")
