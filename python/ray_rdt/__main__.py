"""``python -m ray_rdt``: the ``ray-rdt`` command (:mod:`ray_rdt.cli`)."""

import sys

from ray_rdt.cli import main

sys.exit(main())
