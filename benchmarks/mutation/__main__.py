import sys

from .run import launch_mutmut, main

if len(sys.argv) > 1 and sys.argv[1] == "--mutmut":  # mutmut's own command line
    sys.exit(launch_mutmut(sys.argv[2:]))
sys.exit(main())
