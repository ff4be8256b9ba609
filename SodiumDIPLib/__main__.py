import sys

from SodiumDIPLib.apps.cli import main

sys.exit(main())
