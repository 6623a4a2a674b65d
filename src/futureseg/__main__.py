import sys

from futureseg.cli import main

sys.exit(main())
