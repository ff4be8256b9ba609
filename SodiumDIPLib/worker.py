"""``python -m SodiumDIPLib.worker JOB.json | --describe``: the background worker's entry point (the protocol and
its implementation live in ``SodiumDIPLib.apps.worker``)."""

import sys

from SodiumDIPLib.apps.worker import main

if __name__ == "__main__":
    sys.exit(main())
