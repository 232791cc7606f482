"""python -m stargan_ray.cli"""

import sys

from . import main

sys.exit(main())
