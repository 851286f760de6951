"""caresync: offline-first replication of clinical records.

No entry a clinician made is ever lost, and no disagreement between two
laptops is ever hidden. See README.md and docs/ for the guided tour.
"""

from caresync.conflicts import *  # noqa: F403
from caresync.conflicts import __all__ as _conflict_names
from caresync.exceptions import *  # noqa: F403
from caresync.exceptions import __all__ as _exception_names
from caresync.records import *  # noqa: F403
from caresync.records import __all__ as _record_names

__version__ = "0.1.0"

__all__ = [*_exception_names, *_record_names, *_conflict_names, "__version__"]
