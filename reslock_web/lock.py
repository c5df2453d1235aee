"""The helper's old address: flows written as `from reslock_web.lock import resource_lock`,
and results Prefect pickled with its errors, keep working. Its home is the `reslock` package."""

from reslock.lock import *  # noqa: F403
from reslock.lock import __all__  # noqa: F401
